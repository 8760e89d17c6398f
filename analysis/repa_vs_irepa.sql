-- repa_vs_irepa: FID of REPA and iREPA per encoder at the same sweep, model size, protocol and
-- step (averaged over seeds), with the relative change (negative = iREPA better).
-- Set `step` in params (NULL = every step where both were evaluated).
--   harness query --file analysis/repa_vs_irepa.sql
WITH params AS (SELECT NULL::BIGINT AS step),
per_encoder AS (
    SELECT sweep, model, protocol_key, v.step, encoder, method, avg(fid) AS fid
    FROM v_study v, params p
    WHERE fid IS NOT NULL AND method IN ('repa', 'irepa')
      AND (p.step IS NULL OR v.step = p.step)
    GROUP BY ALL
),
paired AS (
    PIVOT per_encoder ON method IN ('repa', 'irepa') USING avg(fid)
)
SELECT sweep, model, step, protocol_key, encoder,
       round(repa, 3) AS fid_repa, round(irepa, 3) AS fid_irepa,
       round(100.0 * (irepa - repa) / repa, 2) AS rel_change_pct
FROM paired
WHERE repa IS NOT NULL AND irepa IS NOT NULL
ORDER BY sweep, model, step, protocol_key, rel_change_pct;
