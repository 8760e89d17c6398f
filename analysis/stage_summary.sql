-- stage_summary: how many stage instances are in each state, per stage.
--   harness query --file analysis/stage_summary.sql
PIVOT (SELECT stage, state FROM stages) ON state USING count(*) GROUP BY stage ORDER BY stage;
