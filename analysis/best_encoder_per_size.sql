-- best_encoder_per_size: the encoder with the lowest FID per sweep, model size, method and
-- evaluation protocol, at one training step, with the runner-up and the `none` baseline.
-- FID is averaged over seeds. Set `step` in params (NULL = each group's latest evaluated step).
--   harness query --file analysis/best_encoder_per_size.sql
WITH params AS (SELECT NULL::BIGINT AS step),
per_encoder AS (
    SELECT sweep, model, method, protocol_key, step, encoder,
           avg(fid) AS fid, count(DISTINCT run_id) AS n_seeds,
           avg(lp_top1) AS lp_top1, avg(lds) AS lds,
           bool_or(extractor_substitute) AS substitute_extractor
    FROM v_study
    WHERE fid IS NOT NULL AND NOT isnan(fid)
    GROUP BY ALL
),
at_step AS (
    SELECT e.*
    FROM per_encoder e, params p
    QUALIFY e.step = coalesce(p.step, max(e.step) OVER (PARTITION BY e.sweep, e.model, e.method, e.protocol_key))
),
ranked AS (
    SELECT *,
           row_number() OVER (PARTITION BY sweep, model, method, protocol_key, step ORDER BY fid, encoder) AS rank,
           count(*) OVER (PARTITION BY sweep, model, method, protocol_key, step) AS n_encoders
    FROM at_step
    WHERE method <> 'none'
),
baseline AS (
    SELECT sweep, model, protocol_key, step, fid AS fid_none FROM at_step WHERE method = 'none'
)
SELECT b.sweep, b.model, b.method, b.step, b.protocol_key,
       b.encoder AS best_encoder, round(b.fid, 3) AS fid,
       r.encoder AS runner_up, round(r.fid, 3) AS runner_up_fid,
       round(n.fid_none, 3) AS fid_none,
       b.n_seeds, b.n_encoders, b.lp_top1, b.lds, b.substitute_extractor
FROM ranked b
LEFT JOIN ranked r
    ON r.rank = 2 AND r.sweep IS NOT DISTINCT FROM b.sweep AND r.model = b.model
   AND r.method = b.method AND r.protocol_key = b.protocol_key AND r.step = b.step
LEFT JOIN baseline n
    ON n.sweep IS NOT DISTINCT FROM b.sweep AND n.model = b.model
   AND n.protocol_key = b.protocol_key AND n.step = b.step
WHERE b.rank = 1
ORDER BY b.sweep, b.model, b.method, b.protocol_key;
