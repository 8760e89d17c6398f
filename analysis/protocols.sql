-- protocols: every evaluation protocol in the database (FIDs are comparable only within one),
-- with the runs and steps it covers. extractor_substitute = true: not an Inception FID.
--   harness query --file analysis/protocols.sql
SELECT protocol_key, num_samples, sampler, nfe, cfg_scale, guidance_low, guidance_high, vae,
       reference_key, extractor, extractor_substitute,
       count(DISTINCT run_id) AS n_runs, count(*) AS n_evals,
       list(DISTINCT step ORDER BY step) AS steps,
       list(DISTINCT model ORDER BY model) AS models
FROM v_study
WHERE protocol_key IS NOT NULL
GROUP BY ALL
ORDER BY n_evals DESC;
