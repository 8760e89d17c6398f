-- failed_stages: every stage that did not finish (failed, diverged, interrupted or cancelled),
-- with its job id and error, grouped by stage. Read the full log tail with
-- `harness status` or the job's stderr under results/jobs/.
--   harness query --file analysis/failed_stages.sql
SELECT stage, state, label, job_id, key,
       regexp_replace(coalesce(error, ''), '\s+', ' ', 'g') AS error
FROM stages
WHERE state IN ('failed', 'diverged', 'interrupted', 'cancelled')
ORDER BY stage, state, label;
