"""The distributed system model, the integer program and the RL agent: notebooks ``05_nlp`` and ``06_rl``.

Reproduces Baccour et al. (ICC 2023; FGCS 2024): a pre-trained model cut into segments that run on a
ward's devices in turn, pruned only when bandwidth, memory or energy make the deadline infeasible. The
papers are not available in full: the system model (``docs/DESIGN.md``) is this project's reconstruction.

- :mod:`~xaiprune.planning.system`: scenarios, devices, links, the transfer time and a plan's cost;
- :mod:`~xaiprune.planning.estimation`: each link's bandwidth estimated from past measured transfers (what a real
  coordinator knows of its links);
- :mod:`~xaiprune.planning.feasibility`: the shared feasibility bounds every planner and mask uses;
- :mod:`~xaiprune.planning.solution` and :mod:`~xaiprune.planning.nlp`: the integer program (PuLP/CBC) and the
  exact enumeration;
- :mod:`~xaiprune.planning.candidates`: the accuracy surrogate and measured verification of candidates;
- :mod:`~xaiprune.planning.accuracy`: the accuracy model refitted on measured plans;
- :mod:`~xaiprune.planning.sweep` and :mod:`~xaiprune.planning.verify`: notebook 05's studies (the deadline and
  bandwidth sweep, heuristics, solve time; the surrogate's error and the verified answers, measured);
- :mod:`~xaiprune.planning.fades`, :mod:`~xaiprune.planning.env`, :mod:`~xaiprune.planning.seqenv`: bandwidth
  traces and the two environments (one decision per request; one per segment, with exact masks);
- :mod:`~xaiprune.planning.rl`, :mod:`~xaiprune.planning.imitation`, :mod:`~xaiprune.planning.agent`: the
  MultiDiscrete baseline agent, behaviour cloning with DAgger, and the sequential MaskablePPO agent;
- :mod:`~xaiprune.planning.training`: notebook 06's training of both agents per ward, cached;
- :mod:`~xaiprune.planning.shield`: the check of a learned plan at decision time;
- :mod:`~xaiprune.planning.masked` and :mod:`~xaiprune.planning.ablation`: greedy and random inside the agent's
  masks, and what each training phase adds;
- :mod:`~xaiprune.planning.judging` and :mod:`~xaiprune.planning.evaluation`: paired held-out evaluation against
  the optimum, and notebook 06's judgement (held-out wards, decision times, the replayed fade, targets);
- :mod:`~xaiprune.planning.plots`: the figures of notebooks 05 and 06.
"""
