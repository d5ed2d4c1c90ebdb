"""The study machinery: parameters, the notebook pipeline, the claims and the report.

- :mod:`~xaiprune.study.schema`: how a parameter is declared and checked; a notebook step of a run;
- :mod:`~xaiprune.study.rules` and :mod:`~xaiprune.study.parameters`: every notebook's parameters and the rules
  over them (names from the registry :mod:`xaiprune.names`, never from a system);
- :mod:`~xaiprune.study.pipeline`: ``python -m xaiprune.study.pipeline`` runs the numbered notebooks with
  papermill (``make report``);
- :mod:`~xaiprune.study.claims` and :mod:`~xaiprune.study.report`: each paper's claims judged on the run's
  metrics, and the HTML report.

No module here imports a system package: the study reads what the notebooks wrote.
"""
