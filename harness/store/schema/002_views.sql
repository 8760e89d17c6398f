-- 002_views: how the derived tables are computed (derive_*), which artifact owns the child
-- rows (*_owners), and the analysis views v_study and v_correlations.
--
-- Winner rule (every natural key): the newest artifact wins, ordered by finished_at then by
-- stage key, so an incremental ingest and a --rebuild pick the same row.

-- ------------------------------------------------------------------------------------------
-- stages: plan + submissions + state.json + result.json, the newest event wins (done is final)
-- ------------------------------------------------------------------------------------------
CREATE VIEW derive_stages AS
WITH planned AS (
    SELECT stage_key,
           min(stage) AS stage,
           list(DISTINCT sweep ORDER BY sweep) AS sweeps,
           min(label) AS label,
           arg_max(labels, plan_created_at) AS labels,
           arg_max(needs, plan_created_at) AS needs,
           max(est_gpu_hours) AS est_gpu_hours
    FROM plan_stages GROUP BY stage_key
), submitted AS (
    SELECT * FROM submissions
    QUALIFY row_number() OVER (PARTITION BY stage_key
                               ORDER BY submitted_at DESC NULLS LAST, attempt DESC, sweep DESC) = 1
), events AS (
    SELECT stage_key, finished_at AS ts, status AS state, 3 AS source FROM results
    UNION ALL SELECT stage_key, updated_at, state, 2 FROM stage_states
    UNION ALL SELECT stage_key, submitted_at, coalesce(state, 'submitted'), 1 FROM submitted
    UNION ALL SELECT stage_key, NULL, 'planned', 0 FROM planned
), current_state AS (
    SELECT stage_key, state FROM events
    QUALIFY row_number() OVER (PARTITION BY stage_key
                               ORDER BY (source = 3 AND state = 'done') DESC,
                                        ts DESC NULLS LAST, source DESC) = 1
)
SELECT c.stage_key AS key,
       coalesce(r.stage, s.stage, p.stage, 'unknown') AS stage,
       coalesce(p.sweeps, []::VARCHAR[]) AS sweeps,
       coalesce(p.label, coalesce(r.stage, s.stage) || ' ' || c.stage_key) AS label,
       p.labels,
       p.needs,
       c.state,
       coalesce(b.job_id, s.job_id, r.job_id) AS job_id,
       b.executor,
       b.attempt,
       b.submitted_at,
       CASE WHEN s.started_at IS NOT NULL AND (r.started_at IS NULL OR s.started_at > r.started_at)
            THEN s.started_at ELSE r.started_at END AS started_at,
       r.finished_at,
       r.wall_time_s,
       p.est_gpu_hours,
       CASE WHEN c.state = 'done' THEN NULL ELSE coalesce(s.error, r.error) END AS error,
       CASE WHEN c.state = 'done' THEN NULL ELSE s.log_tail END AS log_tail,
       b.log AS job_log,
       coalesce(r.path, 'stages/' || coalesce(s.stage, p.stage) || '/' || c.stage_key) AS path
FROM current_state c
LEFT JOIN results r USING (stage_key)
LEFT JOIN stage_states s USING (stage_key)
LEFT JOIN submitted b USING (stage_key)
LEFT JOIN planned p USING (stage_key);

-- ------------------------------------------------------------------------------------------
-- encoders: catalogue entries carried in stage configs (config.encoder_spec), newest wins
-- ------------------------------------------------------------------------------------------
CREATE MACRO encoder_spec(config) AS
    CASE WHEN json_type(config->'$.encoder_spec') = 'OBJECT' THEN config->'$.encoder_spec'
         WHEN json_type(config->'$.encoder') = 'OBJECT' THEN config->'$.encoder' END;

CREATE VIEW derive_encoders AS
WITH specs AS (
    SELECT encoder_spec(config) AS spec, plan_created_at AS ts, 0 AS source, stage_key
    FROM plan_stages
    UNION ALL
    SELECT encoder_spec(config), finished_at, 1, stage_key FROM results
)
SELECT spec->>'$.name' AS name,
       spec->>'$.family' AS family,
       spec->>'$.source' AS source,
       spec->>'$.model_id' AS model_id,
       TRY_CAST(spec->>'$.embed_dim' AS INTEGER) AS embed_dim,
       TRY_CAST(spec->>'$.patch_size' AS INTEGER) AS patch_size,
       spec->>'$.published_name' AS published_name,
       TRY_CAST(spec->>'$.irepa27' AS BOOLEAN) AS irepa27,
       spec
FROM specs WHERE spec->>'$.name' IS NOT NULL
QUALIFY row_number() OVER (PARTITION BY spec->>'$.name'
                           ORDER BY ts DESC NULLS LAST, source DESC, stage_key DESC) = 1;

-- ------------------------------------------------------------------------------------------
-- child owners: which artifact's file provides the child rows of each natural key
-- ------------------------------------------------------------------------------------------
CREATE VIEW train_log_owners AS
WITH planned_run AS (
    SELECT stage_key, min(labels->>'$.run_id') AS run_id FROM plan_stages GROUP BY stage_key
), candidates AS (
    SELECT i.owner AS stage_key, i.path, i.sha256,
           coalesce(r.payload->>'$.run_id', p.run_id, i.owner) AS run_id,
           coalesce(r.finished_at, i.mtime_ns / 1e9) AS ts
    FROM ingested i
    LEFT JOIN results r ON r.stage_key = i.owner
    LEFT JOIN planned_run p ON p.stage_key = i.owner
    WHERE i.kind = 'train_log'
)
SELECT stage_key, path, run_id, sha256 || ':' || run_id AS signature
FROM candidates
QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY ts DESC, stage_key DESC) = 1;

-- train_log.jsonl contents -> train_log rows. One row per step: the last line of a step wins
-- (a resumed run logs again the steps after its checkpoint); a torn final line, non-JSON lines
-- and lines without an integer step are skipped; NaN / Infinity are kept.
CREATE MACRO parse_train_logs(stage_keys, run_ids, contents) AS TABLE
WITH files AS (
    SELECT unnest(stage_keys) AS stage_key, unnest(run_ids) AS run_id,
           string_split(unnest(contents), chr(10)) AS lines
), numbered AS (
    SELECT stage_key, run_id, unnest(lines) AS line, generate_subscripts(lines, 1) AS line_no,
           len(lines) AS n_lines
    FROM files
), parsed AS (
    SELECT stage_key, run_id, line_no,
           CASE WHEN json_valid(line) AND json_type(line) = 'OBJECT' THEN from_json(line,
               '{"step": "JSON", "loss": "DOUBLE", "flow_loss": "DOUBLE", "proj_loss": "DOUBLE",
                 "align_cos": "DOUBLE", "grad_norm": "DOUBLE", "lr": "DOUBLE",
                 "images_per_s": "DOUBLE", "time": "DOUBLE"}') END AS r
    FROM numbered
    WHERE line_no < n_lines  -- the text after the last newline: empty, or a torn line
)
SELECT stage_key, run_id, CAST(r.step AS BIGINT) AS step, r.* EXCLUDE (step)
FROM parsed
WHERE json_type(r.step) IN ('UBIGINT', 'BIGINT')
QUALIFY row_number() OVER (PARTITION BY stage_key, r.step ORDER BY line_no DESC) = 1;

-- ------------------------------------------------------------------------------------------
-- runs: planned train stages + train results (newest result per run_id wins)
-- ------------------------------------------------------------------------------------------
CREATE VIEW derive_runs AS
WITH planned AS (
    SELECT coalesce(labels->>'$.run_id', stage_key) AS run_id, *
    FROM plan_stages WHERE stage = 'train'
), first_plan AS (
    SELECT * FROM planned
    QUALIFY row_number() OVER (PARTITION BY run_id
                               ORDER BY plan_created_at NULLS LAST, sweep, stage_key) = 1
), latest_plan AS (
    SELECT * FROM planned
    QUALIFY row_number() OVER (PARTITION BY run_id
                               ORDER BY plan_created_at DESC NULLS LAST, sweep DESC, stage_key DESC) = 1
), trained AS (
    SELECT coalesce(payload->>'$.run_id', stage_key) AS run_id, * FROM results
    WHERE stage = 'train'
    QUALIFY row_number() OVER (PARTITION BY coalesce(payload->>'$.run_id', stage_key)
                               ORDER BY finished_at DESC, stage_key DESC) = 1
), logged AS (
    SELECT run_id, max(step) AS last_step FROM train_log GROUP BY run_id
), ids AS (
    SELECT run_id FROM planned UNION SELECT run_id FROM trained
), merged AS (
    SELECT ids.run_id,
           f.sweep,
           coalesce(t.payload->>'$.method', l.labels->>'$.method',
                    l.config->>'$.run.method') AS method,
           coalesce(t.payload->>'$.encoder', l.labels->>'$.encoder',
                    l.config->>'$.run.encoder') AS encoder,
           coalesce(t.payload->>'$.model', l.labels->>'$.model',
                    l.config->>'$.run.model.name') AS model,
           TRY_CAST(coalesce(t.payload->>'$.seed', l.labels->>'$.seed',
                             l.config->>'$.run.seed') AS BIGINT) AS seed,
           TRY_CAST(coalesce(t.payload->>'$.steps_target', l.config->>'$.run.train.steps')
                    AS BIGINT) AS steps_target,
           coalesce(TRY_CAST(t.payload->>'$.steps_done' AS BIGINT), g.last_step) AS steps_done,
           coalesce(t.stage_key, l.stage_key) AS train_key,
           coalesce(t.data_key, l.data_key) AS data_key,
           TRY_CAST(t.payload->>'$.images_per_s' AS DOUBLE) AS images_per_s,
           TRY_CAST(t.payload->>'$.final.loss' AS DOUBLE) AS final_loss,
           TRY_CAST(t.payload->>'$.final.flow_loss' AS DOUBLE) AS final_flow_loss,
           TRY_CAST(t.payload->>'$.final.proj_loss' AS DOUBLE) AS final_proj_loss,
           TRY_CAST(t.payload->>'$.final.align_cos' AS DOUBLE) AS final_align_cos,
           CASE WHEN json_type(t.payload->'$.diverged') = 'NULL' THEN NULL
                ELSE t.payload->'$.diverged' END AS diverged,
           t.error,
           t.wall_time_s,
           coalesce(t.config, l.config) AS config
    FROM ids
    LEFT JOIN trained t USING (run_id)
    LEFT JOIN latest_plan l USING (run_id)
    LEFT JOIN first_plan f USING (run_id)
    LEFT JOIN logged g USING (run_id)
)
SELECT m.* EXCLUDE (encoder),
       CASE WHEN m.method = 'none' THEN NULL ELSE m.encoder END AS encoder,
       coalesce(s.state, 'planned') AS status
FROM merged m LEFT JOIN stages s ON s.key = m.train_key;

-- ------------------------------------------------------------------------------------------
-- evaluations, spatial metrics, probes, FID references, environments
-- ------------------------------------------------------------------------------------------
CREATE VIEW derive_evaluations AS
SELECT payload->>'$.run_id' AS run_id,
       CAST(payload->>'$.step' AS BIGINT) AS step,
       variant_key AS protocol_key,
       TRY_CAST(payload->>'$.metrics.fid' AS DOUBLE) AS fid,
       TRY_CAST(payload->>'$.metrics.isc_mean' AS DOUBLE) AS isc,
       TRY_CAST(payload->>'$.metrics.isc_std' AS DOUBLE) AS isc_std,
       TRY_CAST(payload->>'$.metrics.kid_mean' AS DOUBLE) AS kid,
       TRY_CAST(payload->>'$.metrics.kid_std' AS DOUBLE) AS kid_std,
       TRY_CAST(payload->>'$.metrics.precision' AS DOUBLE) AS precision,
       TRY_CAST(payload->>'$.metrics.recall' AS DOUBLE) AS recall,
       TRY_CAST(payload->>'$.metrics.fd_dinov2' AS DOUBLE) AS fd_dinov2,
       TRY_CAST(payload->>'$.protocol.num_samples' AS BIGINT) AS num_samples,
       payload->>'$.protocol.sampler' AS sampler,
       TRY_CAST(payload->>'$.protocol.nfe' AS BIGINT) AS nfe,
       TRY_CAST(payload->>'$.protocol.cfg_scale' AS DOUBLE) AS cfg_scale,
       TRY_CAST(payload->>'$.protocol.guidance_low' AS DOUBLE) AS guidance_low,
       TRY_CAST(payload->>'$.protocol.guidance_high' AS DOUBLE) AS guidance_high,
       payload->>'$.protocol.vae' AS vae,
       TRY_CAST(payload->>'$.protocol.seed' AS BIGINT) AS sample_seed,
       payload->>'$.protocol.reference_key' AS reference_key,
       payload->>'$.protocol.extractor' AS extractor,
       payload->>'$.protocol.extractor_weights' AS extractor_weights,
       TRY_CAST(payload->>'$.protocol.extractor_substitute' AS BOOLEAN) AS extractor_substitute,
       payload->>'$.protocol.torch_fidelity' AS torch_fidelity,
       payload->'$.protocol' AS protocol,
       stage_key,
       finished_at
FROM results
WHERE stage = 'eval' AND status = 'done'
  AND payload->>'$.run_id' IS NOT NULL AND payload->>'$.step' IS NOT NULL
QUALIFY row_number() OVER (PARTITION BY payload->>'$.run_id', CAST(payload->>'$.step' AS BIGINT),
                                        variant_key
                           ORDER BY finished_at DESC, stage_key DESC) = 1;

CREATE VIEW derive_spatial_metrics AS
SELECT payload->>'$.encoder' AS encoder,
       data_key,
       variant_key AS params_key,
       payload->'$.dataset' AS dataset,
       payload->'$.grid' AS grid,
       TRY_CAST(payload->>'$.n_images' AS BIGINT) AS n_images,
       TRY_CAST(payload->>'$.metrics.lds.mean' AS DOUBLE) AS lds,
       TRY_CAST(payload->>'$.metrics.lds.std' AS DOUBLE) AS lds_std,
       TRY_CAST(payload->>'$.metrics.lds.n' AS BIGINT) AS lds_n,
       TRY_CAST(payload->>'$.metrics.cds.mean' AS DOUBLE) AS cds,
       TRY_CAST(payload->>'$.metrics.cds.std' AS DOUBLE) AS cds_std,
       TRY_CAST(payload->>'$.metrics.cds.n' AS BIGINT) AS cds_n,
       TRY_CAST(payload->>'$.metrics.srss.mean' AS DOUBLE) AS srss,
       TRY_CAST(payload->>'$.metrics.srss.std' AS DOUBLE) AS srss_std,
       TRY_CAST(payload->>'$.metrics.srss.n' AS BIGINT) AS srss_n,
       TRY_CAST(payload->>'$.metrics.rmsc.mean' AS DOUBLE) AS rmsc,
       TRY_CAST(payload->>'$.metrics.rmsc.std' AS DOUBLE) AS rmsc_std,
       TRY_CAST(payload->>'$.metrics.rmsc.n' AS BIGINT) AS rmsc_n,
       payload->'$.params' AS params,
       stage_key,
       finished_at
FROM results
WHERE stage = 'spatial' AND status = 'done' AND payload->>'$.encoder' IS NOT NULL
QUALIFY row_number() OVER (PARTITION BY payload->>'$.encoder', data_key, variant_key
                           ORDER BY finished_at DESC, stage_key DESC) = 1;

CREATE VIEW per_image_owners AS
SELECT s.stage_key, i.path, s.encoder, s.data_key, s.params_key,
       i.sha256 || ':' || s.encoder || ':' || s.data_key || ':' || s.params_key AS signature
FROM derive_spatial_metrics s
JOIN ingested i ON i.owner = s.stage_key AND i.kind = 'per_image';

CREATE VIEW derive_probes AS
WITH probe AS (
    SELECT CASE WHEN payload->>'$.encoder' IS NOT NULL THEN 'encoder:' || (payload->>'$.encoder')
                ELSE 'run:' || (payload->>'$.run_id') || '@' || coalesce(payload->>'$.step', '?')
                     || '/' || coalesce(payload->>'$.block', '?') END AS subject,
           *
    FROM results
    WHERE stage = 'probe' AND status = 'done'
      AND (payload->>'$.encoder' IS NOT NULL OR payload->>'$.run_id' IS NOT NULL)
)
SELECT subject,
       data_key,
       coalesce(payload->>'$.pooling', '') AS pooling,
       variant_key AS params_key,
       payload->>'$.encoder' AS encoder,
       payload->>'$.run_id' AS run_id,
       TRY_CAST(payload->>'$.step' AS BIGINT) AS step,
       TRY_CAST(payload->>'$.block' AS INTEGER) AS block,
       TRY_CAST(payload->>'$.top1' AS DOUBLE) AS top1,
       TRY_CAST(payload->>'$.top5' AS DOUBLE) AS top5,
       TRY_CAST(payload->>'$.best_lr' AS DOUBLE) AS best_lr,
       payload->'$.grid' AS lr_grid,
       TRY_CAST(payload->>'$.n_train' AS BIGINT) AS n_train,
       TRY_CAST(payload->>'$.n_val' AS BIGINT) AS n_val,
       TRY_CAST(payload->>'$.subset_per_class' AS BIGINT) AS subset_per_class,
       payload->>'$.features_key' AS features_key,
       stage_key,
       finished_at
FROM probe
QUALIFY row_number() OVER (PARTITION BY subject, data_key, coalesce(payload->>'$.pooling', ''),
                                        variant_key
                           ORDER BY finished_at DESC, stage_key DESC) = 1;

CREATE VIEW derive_fid_refs AS
SELECT payload->>'$.reference_key' AS reference_key,
       payload->>'$.extractor' AS extractor,
       TRY_CAST(payload->>'$.n_images' AS BIGINT) AS n_images,
       payload->'$.dataset' AS dataset,
       stage_key,
       finished_at
FROM results
WHERE stage = 'fid_ref' AND status = 'done' AND payload->>'$.reference_key' IS NOT NULL
QUALIFY row_number() OVER (PARTITION BY payload->>'$.reference_key'
                           ORDER BY finished_at DESC, stage_key DESC) = 1;

CREATE VIEW derive_environments AS
SELECT stage_key AS key,
       stage,
       provenance->>'$.git_sha' AS git_sha,
       provenance->>'$.host' AS host,
       provenance->>'$.gpu' AS gpu,
       provenance->>'$.python' AS python,
       provenance->>'$.platform' AS platform,
       provenance->'$.packages' AS packages,
       provenance->>'$.slurm_job_id' AS slurm_job_id,
       provenance->>'$.slurm_array_task_id' AS slurm_array_task_id,
       provenance->>'$.slurm_restart_count' AS slurm_restart_count,
       finished_at,
       wall_time_s
FROM results;

-- ------------------------------------------------------------------------------------------
-- analysis views
-- ------------------------------------------------------------------------------------------
-- The encoder measurement v_study uses per (encoder, dataset): the most images, then the newest.
CREATE VIEW v_encoder_spatial AS
SELECT * FROM spatial_metrics
QUALIFY row_number() OVER (PARTITION BY encoder, data_key
                           ORDER BY n_images DESC NULLS LAST, finished_at DESC, params_key) = 1;

-- The encoder linear probe v_study uses per (encoder, dataset): mean pooling of patch tokens
-- (iREPA's protocol) first, then the most training images, then the newest.
CREATE VIEW v_encoder_probe AS
SELECT * FROM probes WHERE encoder IS NOT NULL
QUALIFY row_number() OVER (PARTITION BY encoder, data_key
                           ORDER BY (pooling = 'mean') DESC, n_train DESC NULLS LAST,
                                    finished_at DESC, params_key) = 1;

-- One row per training run and evaluation (run_id, step, protocol_key); a run without a
-- finished evaluation appears once with step and the metrics NULL.
CREATE VIEW v_study AS
SELECT r.sweep, r.run_id, r.encoder, r.method, r.model, r.seed,
       e.step,
       r.status AS train_status,
       e.fid, e.isc, e.kid, e.precision, e.recall, e.fd_dinov2,
       e.num_samples, e.sampler, e.nfe, e.cfg_scale, e.guidance_low, e.guidance_high, e.vae,
       e.reference_key, e.extractor, e.extractor_substitute, e.protocol_key,
       p.top1 AS lp_top1, p.top5 AS lp_top5,
       s.lds, s.cds, s.srss, s.rmsc,
       n.published_name
FROM runs r
LEFT JOIN evaluations e ON e.run_id = r.run_id
LEFT JOIN v_encoder_spatial s ON s.encoder = r.encoder AND s.data_key = r.data_key
LEFT JOIN v_encoder_probe p ON p.encoder = r.encoder AND p.data_key = r.data_key
LEFT JOIN encoders n ON n.name = r.encoder;

-- Pearson r and Spearman rho (average ranks for ties) of each encoder metric against FID,
-- per (model, method, step, protocol_key). One point per encoder: FID averaged over seeds.
CREATE VIEW v_correlations AS
WITH per_encoder AS (
    SELECT model, method, step, protocol_key, encoder,
           avg(fid) AS fid, avg(lp_top1) AS lp_top1, avg(lds) AS lds, avg(cds) AS cds,
           avg(srss) AS srss, avg(rmsc) AS rmsc
    FROM v_study
    WHERE fid IS NOT NULL AND NOT isnan(fid) AND encoder IS NOT NULL
    GROUP BY model, method, step, protocol_key, encoder
), long AS (
    SELECT * FROM (
        UNPIVOT per_encoder ON lp_top1, lds, cds, srss, rmsc INTO NAME metric VALUE value
    ) WHERE NOT isnan(value)
), ranked AS (
    SELECT *,
           rank() OVER (PARTITION BY model, method, step, protocol_key, metric ORDER BY value)
             + (count(*) OVER (PARTITION BY model, method, step, protocol_key, metric, value) - 1) / 2.0
             AS value_rank,
           rank() OVER (PARTITION BY model, method, step, protocol_key, metric ORDER BY fid)
             + (count(*) OVER (PARTITION BY model, method, step, protocol_key, metric, fid) - 1) / 2.0
             AS fid_rank
    FROM long
), stats AS (
    SELECT model, method, step, protocol_key, metric,
           count(*) AS n,
           corr(value, fid) AS pearson_r,
           corr(value_rank, fid_rank) AS spearman_rho
    FROM ranked
    GROUP BY model, method, step, protocol_key, metric
)
SELECT model, method, step, protocol_key, metric, n,
       CASE WHEN isnan(pearson_r) THEN NULL ELSE pearson_r END AS pearson_r,
       CASE WHEN isnan(spearman_rho) THEN NULL ELSE spearman_rho END AS spearman_rho
FROM stats;
