"""The scenario engine: YAML experiments run across a testbed's nodes, with results, reports
and plots.

    schema      scenario YAML -> frozen dataclasses (errors name file, line, field); --set
    assertions  the expression language of `assertions:` (parsed, never eval'd)
    arrivals    arrival patterns as pure, seeded functions (fixed, closed loop, Poisson, trace)
    kinds       workload kinds (exec, agent) in a registry; later kinds plug in here
    executor    `testbed run`: up, set-up, units in parallel, failures, resume, down
    stats       percentile (linear interpolation) and summary statistics
    results     the results folder: raw.jsonl, summary.json, meta.json, failures.json
    report      report.md, `testbed report`, `testbed compare`
    plots       latency CDF, memory against instances, startup breakdown (PNG)
    commands    the CLI verbs
"""
