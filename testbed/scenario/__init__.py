"""The scenario engine: YAML experiments run across a testbed's nodes, with results, reports
and plots.

    spec/     scenario YAML -> frozen dataclasses (errors name file, line, field): schema (load,
              parse), model (the dataclasses), fields, items, overrides (--set); assertions (the
              expression language, parsed, never eval'd); arrivals (pure, seeded patterns)
    kinds/    workload kinds in a registry (kinds/__init__.py): exec, agent, restore, sandbox;
              base.py is what every kind shares
    run/      `testbed run`: executor (the run), seam (what it needs from the world: the
              lifecycle's Testbed satisfies it), scheduler, sessions, sampler, bars
    output/   the results folder (results, folder, summary), report.md, plots, stats, fidelity
The CLI verbs are in testbed.ui.scenario_commands.
"""
