-- encoder_metrics: the per-encoder measurements (spatial metrics and linear probe) next to each
-- other, with the name the papers use. One row per encoder, measurement setting and pooling.
--   harness query --file analysis/encoder_metrics.sql
SELECT e.name AS encoder, e.family, e.published_name,
       CAST(s.dataset AS VARCHAR) AS dataset, CAST(s.grid AS VARCHAR) AS grid, s.n_images,
       round(s.lds, 4) AS lds, round(s.cds, 4) AS cds, round(s.srss, 4) AS srss,
       round(s.rmsc, 4) AS rmsc, p.pooling, round(p.top1, 2) AS lp_top1, round(p.top5, 2) AS lp_top5
FROM encoders e
LEFT JOIN spatial_metrics s ON s.encoder = e.name
LEFT JOIN probes p ON p.encoder = e.name
ORDER BY e.name, dataset, p.pooling;
