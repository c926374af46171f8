"""The llm function (tbagent/functions/llm.py): its maths against a plain float64 reference that
recomputes full causal attention from scratch at every step, the KV cache (prefill and step agree;
export, restore from a read-only buffer, and continue token for token), float16 storage,
determinism, tied embeddings, and the checks of untrusted configs, caches and events."""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from tbagent.functions import CATALOG, llm, spec
from tbagent.sandbox import runner
from tbagent.sandbox.cgroup import Limits
from tbproto.catalog import Function

pytestmark = pytest.mark.unit

F64 = npt.NDArray[np.float64]
TINY = llm.Config(dim=32, layers=2, heads=4, hidden=48, max_ctx=40, seed=3)
PROMPT = llm.encode("The CXL memory")


def model(cfg: llm.Config = TINY) -> llm.Model:
    return llm.Model(cfg, llm.tensors(cfg))


# -- the reference: float64, no cache, every position recomputed, written out plainly ----------

def ref_logits(cfg: llm.Config, w: dict[str, np.ndarray], tokens: list[int]) -> F64:
    """The logits [vocab] after tokens, from scratch."""
    W = {k: v.astype(np.float64) for k, v in w.items()}
    n, hd, half = len(tokens), cfg.head_dim, cfg.head_dim // 2

    def rmsnorm(x: F64, g: F64) -> F64:
        return np.array([row / np.sqrt(np.mean(row ** 2) + 1e-5) * g for row in x])

    def rotate(vec: F64, pos: int) -> F64:  # pairs (j, j + half) turned by pos / 10000**(j / half)
        out = vec.copy()
        for j in range(half):
            a = pos / 10000.0 ** (j / half)
            out[j] = vec[j] * np.cos(a) - vec[j + half] * np.sin(a)
            out[j + half] = vec[j] * np.sin(a) + vec[j + half] * np.cos(a)
        return out

    x = np.array([W["embed"][t] for t in tokens])
    for i in range(cfg.layers):
        p = f"layer{i:03d}."
        h = rmsnorm(x, W[p + "attn_norm"])
        q, k, v = h @ W[p + "wq"], h @ W[p + "wk"], h @ W[p + "wv"]
        att = np.zeros_like(x)
        for head in range(cfg.heads):
            sl = slice(head * hd, (head + 1) * hd)
            for t in range(n):
                qt = rotate(q[t, sl], t)
                s = np.array([rotate(k[u, sl], u) @ qt / np.sqrt(hd) for u in range(t + 1)])
                e = np.exp(s - s.max())
                att[t, sl] = (e / e.sum()) @ v[:t + 1, sl]
        x = x + att @ W[p + "wo"]
        h = rmsnorm(x, W[p + "mlp_norm"])
        g = h @ W[p + "w_gate"]
        x = x + (g / (1 + np.exp(-g)) * (h @ W[p + "w_up"])) @ W[p + "w_down"]
    out: F64 = rmsnorm(x[-1:], W["norm"])[0] @ W["embed"].T
    return out


def test_logits_and_greedy_tokens_match_the_reference() -> None:
    w = llm.tensors(TINY)
    m = llm.Model(TINY, w)
    seen: list[tuple[int, int]] = []
    got = m.generate(PROMPT, 8, on_token=lambda i, t: seen.append((i, t)))
    seq, cache = list(PROMPT), m.new_cache()
    logits = m.prefill(PROMPT, cache)
    for token in got:
        ref = ref_logits(TINY, w, seq)
        assert np.allclose(logits, ref, rtol=1e-4, atol=1e-5), np.abs(logits - ref).max()
        assert int(np.argmax(ref)) == token
        seq.append(token)
        logits = m.step(token, cache)
    assert seen == list(enumerate(got)) and len(set(got)) > 1  # not one token repeated


def test_prefill_then_steps_equal_one_prefill_of_the_whole() -> None:
    m = model()
    tokens = m.generate(PROMPT, 10)
    whole = m.prefill(PROMPT + tokens, m.new_cache())
    cache = m.new_cache()
    m.prefill(PROMPT, cache)
    for t in tokens[:-1]:
        m.step(t, cache)
    stepped = m.step(tokens[-1], cache)
    assert cache.length == len(PROMPT) + len(tokens)
    assert np.allclose(stepped, whole, rtol=1e-5, atol=1e-6)
    assert m.generate(PROMPT + tokens, 5) == m.generate(PROMPT, 15)[10:]


def joined(chunks: list[memoryview]) -> bytes:
    return b"".join(bytes(c) for c in chunks)


def test_a_migrated_generation_continues_token_for_token() -> None:
    m = model()
    unmigrated = m.generate(PROMPT, 20)
    a = m.new_cache()
    first = m.generate(PROMPT, 6, cache=a)
    header, kc, vc = a.export()
    k, v = joined(kc), joined(vc)  # bytes: read-only, as a map of the MHD would be
    assert len(k) + len(v) == a.nbytes_used() == 2 * 2 * 4 * (len(PROMPT) + 5) * 8 * 4
    assert np.array_equal(np.frombuffer(k, np.float32).reshape(2, 4, -1, 8), a.k[:, :, :a.length])
    b = llm.KVCache.from_export(TINY, header, k, v)
    assert b.length == a.length and not b.past_k.flags.writeable
    assert np.shares_memory(b.past_k, np.frombuffer(k, np.uint8))  # wrapped, not copied
    second = m.generate([first[-1]], 8, cache=b)
    assert first + second == unmigrated[:14]
    # and again, from the restored cache (its export is past and tail side by side)
    header2, kc2, vc2 = b.export()
    c = llm.KVCache.from_export(TINY, header2, memoryview(joined(kc2)), memoryview(joined(vc2)))
    assert first + second + m.generate([second[-1]], 6, cache=c) == unmigrated


def test_restore_refuses_a_damaged_or_foreign_cache() -> None:
    m = model()
    a = m.new_cache()
    m.prefill(PROMPT, a)
    header, kc, vc = a.export()
    k, v = joined(kc), joined(vc)
    bad = bytearray(k)
    bad[100] ^= 1
    with pytest.raises(ValueError, match="CRC-32"):
        llm.KVCache.from_export(TINY, header, bytes(bad), v)
    with pytest.raises(ValueError, match="bytes, expected"):
        llm.KVCache.from_export(TINY, header, k[:-4], v)
    with pytest.raises(ValueError, match="another model config"):
        llm.KVCache.from_export(llm.Config(**{**TINY.to_json(), "seed": 4}), header, k, v)
    with pytest.raises(ValueError, match="not JSON"):
        llm.KVCache.from_export(TINY, b"{", k, v)
    with pytest.raises(ValueError, match=r"length 99 is out of range 0\.\.40"):
        llm.KVCache.restore(TINY, 99, k, v)
    other = model(llm.Config(**{**TINY.to_json(), "seed": 4}))
    with pytest.raises(ValueError, match="another model config"):
        other.step(1, a)


def test_float16_storage_is_upcast_per_use_and_not_copied() -> None:
    cfg16 = llm.Config(**{**TINY.to_json(), "dtype": "float16"})
    w16 = llm.tensors(cfg16)
    assert {a.dtype for a in w16.values()} == {np.dtype(np.float16)}
    m16 = llm.Model(cfg16, w16)
    assert all(m16.w[n] is w16[n] for n in w16)
    m32 = llm.Model(TINY, {n: a.astype(np.float32) for n, a in w16.items()})
    assert np.array_equal(m16.prefill(PROMPT, m16.new_cache()), m32.prefill(PROMPT, m32.new_cache()))
    w32 = llm.tensors(TINY)
    assert all(np.allclose(w16[n], w32[n], rtol=1e-3, atol=1e-4) for n in w32)  # the same draw, rounded


def test_weights_are_deterministic_and_read_only_weights_work() -> None:
    a, b = llm.tensors(TINY), llm.tensors(TINY)
    assert list(a) == sorted(a) and all(a[n].tobytes() == b[n].tobytes() for n in a)
    other = llm.tensors(llm.Config(**{**TINY.to_json(), "seed": 4}))
    assert all(a[n].tobytes() != other[n].tobytes() for n in a)
    assert {n: (x.shape, str(x.dtype)) for n, x in a.items()} == llm.tensor_specs(TINY)
    assert llm.param_count(TINY) == sum(x.size for x in a.values())
    for x in a.values():
        x.flags.writeable = False
    assert model().generate(PROMPT, 4) == llm.Model(TINY, a).generate(PROMPT, 4)


def test_embeddings_are_tied() -> None:
    w = llm.tensors(TINY)
    assert [n for n, x in w.items() if TINY.vocab in x.shape] == ["embed"]  # no separate output matrix
    j = 200  # not in the prompt: its row only acts as the output projection
    logits = llm.Model(TINY, w).prefill(PROMPT, llm.KVCache(TINY))
    w["embed"][j] = 0
    changed = llm.Model(TINY, w).prefill(PROMPT, llm.KVCache(TINY))
    assert logits[j] != 0 and changed[j] == 0 and np.array_equal(np.delete(logits, j), np.delete(changed, j))


def test_presets_span_ci_to_base() -> None:
    counts = {name: llm.param_count(cfg) for name, cfg in llm.PRESETS.items()}
    assert 2_000_000 <= counts["ci"] <= 4_000_000 and counts["base"] >= 100_000_000
    base = llm.PRESETS["base"]
    kv = 2 * base.layers * base.heads * base.max_ctx * base.head_dim * 4
    limit = Limits.from_dict(CATALOG["llm"].limits).memory_max
    assert limit is not None and counts["base"] * 4 + kv + (200 << 20) <= limit


def test_llm_is_registered_as_a_function() -> None:
    s = CATALOG["llm"]
    assert Function("llm") is Function.LLM and s.source.name == "llm.py" and s.env["OPENBLAS_NUM_THREADS"] == "1"
    text = s.source.read_text()
    assert text.startswith('"""llm: ') and "Initialisation" in text and "Per request" in text
    imports = {line.split()[1].split(".")[0] for line in text.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= set(sys.stdlib_module_names) | {"numpy"}  # copied alone as handler.py


BAD_CONFIGS: list[tuple[Any, str]] = [
    ([1, 2], "expected a JSON object"),
    ({k: v for k, v in TINY.to_json().items() if k != "seed"}, r"missing keys \['seed'\]"),
    ({**TINY.to_json(), "extra": 1}, r"unknown keys \['extra'\]"),
    ({**TINY.to_json(), "dim": True}, "dim must be an integer"),
    ({**TINY.to_json(), "dim": "32"}, "dim must be an integer"),
    ({**TINY.to_json(), "dim": 30}, "must split into heads=4 of an even size"),
    ({**TINY.to_json(), "heads": 32}, "must split into heads=32 of an even size"),
    ({**TINY.to_json(), "dtype": "bfloat16"}, "dtype must be one of float16, float32"),
    ({**TINY.to_json(), "vocab": 256}, "vocab=256 is out of range"),
    ({**TINY.to_json(), "seed": -1}, "seed=-1 is out of range"),
    ({**TINY.to_json(), "max_ctx": 0}, "max_ctx=0 is out of range"),
]


@pytest.mark.parametrize(("data", "message"), BAD_CONFIGS)
def test_config_from_json_refuses_bad_input(data: Any, message: str) -> None:
    with pytest.raises(ValueError, match=f"llm config: .*{message}"):
        llm.Config.from_json(data)


def test_config_round_trips_through_json() -> None:
    cfg = llm.Config.from_json(TINY.to_json())
    assert cfg == TINY and cfg.dtype is llm.DType.FLOAT32 and TINY.to_json()["dtype"] == "float32"


def test_model_refuses_weights_that_do_not_fit() -> None:
    w = llm.tensors(TINY)
    with pytest.raises(ValueError, match=r"missing \['norm'\]"):
        llm.Model(TINY, {n: x for n, x in w.items() if n != "norm"})
    with pytest.raises(ValueError, match=r"layer001\.wq is"):
        llm.Model(TINY, {**w, "layer001.wq": w["layer001.wq"][:, :16]})
    with pytest.raises(ValueError, match=r"embed is .*float16.* expected"):
        llm.Model(TINY, {**w, "embed": w["embed"].astype(np.float16)})


def test_context_overflow_is_a_clear_error() -> None:
    m = model()
    cache = m.new_cache()
    m.prefill([1] * 39, cache)
    m.step(2, cache)  # position 40 of 40
    with pytest.raises(ValueError, match="context overflow: 40 cached \\+ 1 new tokens > max_ctx 40"):
        m.step(3, cache)
    assert len(m.generate([1] * 30, 11)) == 11  # the last token made is not fed back
    with pytest.raises(ValueError, match="context overflow"):
        m.generate([1] * 30, 12)
    with pytest.raises(ValueError, match=r"tokens must be integers in 0\.\.256"):
        m.prefill([257], m.new_cache())


def test_byte_tokenizer_round_trips_text() -> None:
    text = "héllo, CXL ✓"
    assert llm.encode(text)[0] == llm.BOS and len(llm.encode(text)) == 1 + len(text.encode())
    assert llm.decode(llm.encode(text)) == text


Loader = Callable[..., ModuleType]


@pytest.fixture
def load(monkeypatch: pytest.MonkeyPatch) -> Loader:
    monkeypatch.setitem(sys.modules, "handler", ModuleType("handler"))

    def fresh(**env: str) -> ModuleType:
        for key, value in {**spec("llm").env, "LLM_PRESET": "tiny", **env}.items():
            monkeypatch.setenv(key, value)
        return runner.load(str(spec("llm").source))

    return fresh


def test_handle_generates_and_times_tokens(load: Loader) -> None:
    m = load(LLM_DTYPE="float16")
    r = m.handle({"prompt": "hi", "max_tokens": 5})
    assert (r["preset"], r["dtype"], r["prompt_tokens"]) == ("tiny", "float16", 3)
    assert len(r["tokens"]) == 5 and r["text"] == llm.decode(r["tokens"]) and len(r["token_s"]) == 4
    assert r["prefill_s"] > 0 and r["tokens_per_s"] > 0
    assert load(LLM_DTYPE="float16").handle({"prompt": "hi", "max_tokens": 5})["tokens"] == r["tokens"]
    for bad in ({"max_tokens": 0}, {"max_tokens": 5000}, {"max_tokens": "5"}, {"prompt": 3}):
        with pytest.raises(ValueError):
            m.handle(bad)
    with pytest.raises(ValueError, match="context overflow"):
        m.handle({"prompt": "x" * 60, "max_tokens": 10})


def test_the_environment_is_checked(load: Loader) -> None:
    with pytest.raises(ValueError, match="LLM_PRESET='huge'"):
        load(LLM_PRESET="huge")
    with pytest.raises(ValueError, match="dtype must be one of"):
        load(LLM_DTYPE="int8")


def test_the_serverlessllm_scenarios_golden_answer() -> None:
    """scenarios/serverlessllm.yaml asserts every node and loader answers these tokens (the VM
    guests computed the same under TCG): the host's model must agree."""
    import zlib

    cfg = llm.Config.from_json({**llm.PRESETS["small"].to_json(), "seed": 0, "dtype": "float32"})
    out = llm.Model(cfg, llm.tensors(cfg)).generate(llm.encode("Hi, CXL"), 4)
    assert out == [240, 72, 190, 256] and zlib.crc32(b"240,72,190,256") == 3432867117
