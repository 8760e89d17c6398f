-- correlations_per_size: Pearson r and Spearman rho (average ranks for ties) of each encoder
-- metric against FID, per sweep, model size, method, protocol and step; one point per encoder
-- (FID averaged over seeds). Point estimates only: `harness report` adds bootstrap CIs,
-- Kendall tau, partial correlations and outlier influence.
-- Set `step` in params (NULL = every evaluated step).
--   harness query --file analysis/correlations_per_size.sql
WITH params AS (SELECT NULL::BIGINT AS step),
per_encoder AS (
    SELECT sweep, model, method, protocol_key, v.step, encoder,
           avg(fid) AS fid, avg(lp_top1) AS lp_top1, avg(lds) AS lds, avg(cds) AS cds,
           avg(srss) AS srss, avg(rmsc) AS rmsc
    FROM v_study v, params p
    WHERE fid IS NOT NULL AND NOT isnan(fid) AND encoder IS NOT NULL
      AND (p.step IS NULL OR v.step = p.step)
    GROUP BY ALL
),
long AS (
    SELECT * FROM (
        UNPIVOT per_encoder ON lp_top1, lds, cds, srss, rmsc INTO NAME metric VALUE value
    ) WHERE NOT isnan(value)
),
ranked AS (
    SELECT *,
           rank() OVER w_value + (count(*) OVER (PARTITION BY sweep, model, method, protocol_key, step, metric, value) - 1) / 2.0 AS value_rank,
           rank() OVER w_fid + (count(*) OVER (PARTITION BY sweep, model, method, protocol_key, step, metric, fid) - 1) / 2.0 AS fid_rank
    FROM long
    WINDOW w_value AS (PARTITION BY sweep, model, method, protocol_key, step, metric ORDER BY value),
           w_fid AS (PARTITION BY sweep, model, method, protocol_key, step, metric ORDER BY fid)
)
SELECT sweep, model, method, protocol_key, step, metric,
       count(*) AS n,
       round(corr(value, fid), 4) AS pearson_r,
       round(corr(value_rank, fid_rank), 4) AS spearman_rho
FROM ranked
GROUP BY ALL
ORDER BY sweep, model, method, protocol_key, step, metric;
