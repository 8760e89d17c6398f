-- baseline_gain: FID gain of each aligned run over the `none` (no alignment) baseline of the same
-- sweep, model size, protocol and step (both averaged over seeds); positive = alignment helps.
--   harness query --file analysis/baseline_gain.sql
WITH per_encoder AS (
    SELECT sweep, model, protocol_key, step, method, coalesce(encoder, 'none') AS encoder,
           avg(fid) AS fid, count(DISTINCT run_id) AS n_seeds
    FROM v_study
    WHERE fid IS NOT NULL
    GROUP BY ALL
)
SELECT a.sweep, a.model, a.step, a.protocol_key, a.method, a.encoder,
       round(a.fid, 3) AS fid, round(b.fid, 3) AS fid_none,
       round(b.fid - a.fid, 3) AS gain, round(100.0 * (a.fid - b.fid) / b.fid, 2) AS rel_change_pct,
       a.n_seeds
FROM per_encoder a
JOIN per_encoder b
  ON b.method = 'none' AND b.sweep IS NOT DISTINCT FROM a.sweep AND b.model = a.model
 AND b.protocol_key = a.protocol_key AND b.step = a.step
WHERE a.method <> 'none'
ORDER BY a.sweep, a.model, a.step, a.method, gain DESC;
