-- reproduction_gap: our FID next to the published gFID where encoder (encoders.published_name),
-- model size, method, training steps and CFG scale match; none = the unaligned baseline.
-- Check num_samples / extractor before reading a gap as a bug: the papers use 50K samples
-- and the ADM Inception reference batch.
--   harness query --file analysis/reproduction_gap.sql
WITH ours AS (
    SELECT model, method, step, cfg_scale, num_samples, extractor, extractor_substitute,
           coalesce(encoder, 'none') AS encoder,
           CASE WHEN method = 'none' THEN 'none' ELSE published_name END AS match_name,
           avg(fid) AS fid, count(DISTINCT run_id) AS n_seeds
    FROM v_study
    WHERE fid IS NOT NULL
    GROUP BY ALL
),
papers AS (
    SELECT paper, encoder, model, method, TRY_CAST(train_steps AS BIGINT) AS train_steps,
           TRY_CAST(cfg AS DOUBLE) AS cfg, value, source_note,
           CASE WHEN method = 'none' THEN 'none' ELSE encoder END AS match_name
    FROM published
    WHERE lower(metric) IN ('gfid', 'fid')
)
SELECT o.encoder, p.encoder AS published_encoder, o.model, o.method, o.step, o.cfg_scale,
       p.paper, p.value AS published_fid, round(o.fid, 3) AS our_fid,
       round(o.fid - p.value, 3) AS gap, o.n_seeds, o.num_samples, o.extractor,
       o.extractor_substitute, p.source_note
FROM ours o
JOIN papers p
  ON p.match_name = o.match_name AND p.method = o.method AND p.train_steps = o.step
 AND abs(p.cfg - o.cfg_scale) < 1e-9
 AND regexp_replace(lower(p.model), '[^0-9a-z]', '', 'g') = regexp_replace(lower(o.model), '[^0-9a-z]', '', 'g')
ORDER BY o.model, o.method, o.step, o.encoder, p.paper;
