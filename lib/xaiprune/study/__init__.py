"""The study machinery: parameters, the notebook pipeline, the evaluation protocol, the claims and the report.

- :mod:`~xaiprune.study.schema`: how a parameter is declared and checked; a notebook step of a run;
- :mod:`~xaiprune.study.rules` and :mod:`~xaiprune.study.parameters`: every notebook's parameters and the rules
  over them (names from the registry :mod:`xaiprune.names`, never from a system);
- :mod:`~xaiprune.study.pipeline`: ``python -m xaiprune.study.pipeline`` runs the numbered notebooks with
  papermill (``make report``);
- :mod:`~xaiprune.study.protocol`: every claim declared once (paper, endpoint, comparator, margin, target, test,
  seeds, the split of every choice); the notebooks write one row per claim with :func:`~xaiprune.study.protocol.row`;
- :mod:`~xaiprune.study.claims` and :mod:`~xaiprune.study.report`: the rows collected from the run's metrics and
  checked, and the HTML report; :mod:`~xaiprune.study.readme` and :mod:`~xaiprune.study.runinfo`: the README's
  generated tables and the run's metadata.

No module here imports a system package: the study reads what the notebooks wrote.
"""
