"""`noisealign sweep`: methods x budgets x optimized rewards x prompts x seeds, each cell one
`generate` run folder plus one line of results.jsonl, on one machine or a Ray cluster.

spec.py reads the sweep file; cells.py lists the cells; worker.py runs them; executors.py and
ray_executor.py say where; results.py keeps the sweep folder; driver.py ties them together.
"""
