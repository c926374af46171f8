"""tbproto: the wire types shared by the host (testbed) and the guest agent (tbagent).

Standard library only: the agent imports it on the guest. See envelope (the JSON-lines framing),
ops (each op's request and reply type), records (measurement records), errors (codes and exit
statuses), catalog (the function catalogue) and meminfo."""

from tbproto.codec import ProtocolError, decode, decode_as, encode
from tbproto.envelope import VERSION, Reply, Request, Timing

__all__ = ["VERSION", "ProtocolError", "Reply", "Request", "Timing", "decode", "decode_as", "encode"]
