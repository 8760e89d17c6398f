-- convergence: FID per training step for each sweep, model size, method and encoder
-- (mean and spread over seeds), the data behind the convergence curves.
--   harness query --file analysis/convergence.sql --format csv > convergence.csv
SELECT sweep, model, method, coalesce(encoder, 'none') AS encoder, protocol_key, step,
       round(avg(fid), 3) AS fid, round(stddev_samp(fid), 3) AS fid_sd,
       count(DISTINCT run_id) AS n_seeds
FROM v_study
WHERE fid IS NOT NULL
GROUP BY ALL
ORDER BY sweep, model, method, encoder, protocol_key, step;
