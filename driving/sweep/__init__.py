"""The paper's comparison as a sweep of Ray tasks (protocol v2, issue 16; docs/sweep.md).

- `protocol`: what decides the numbers (`Protocol`, the ``v2`` and ``smoke`` protocols),
  the work list (runs, evaluation cells) and where each result lives under OUT;
- `tasks`: the task bodies, plain functions (record the shared dataset and the held-out
  test drives, train one (policy, seed), derive the smoothing and time-blind controls,
  evaluate one (run, condition, road) cell, run one run's passive test on the recorded
  test drives); each is idempotent and returns its result;
- `engine`: submits them as Ray tasks (`--ray-address auto|HOST:PORT`, or a local cluster
  sized to the machine), skips what already has a result file, writes every result
  atomically as it arrives, in one place: OUT;
- `report`: paired statistics (`driving.stats`) over the cells, the tables and the findings,
  and the passive test's offline table and attention SSIM over seeds.
"""
