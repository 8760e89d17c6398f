-- 005_grids_protocols: encoder measurements keyed by token grid and weight provenance, and
-- the complete evaluation protocol (documented in analysis/SCHEMA.md).
--
-- * runs.grid is the SiT token grid of the run (harness.config.model.token_grid of the run
--   config, filled in Python by ingest after each refresh: one definition of the grid), and
--   runs.random_weights the run's `random_weights`;
-- * spatial_metrics / probes gain the encoder's weight provenance (random_weights, weights_id),
--   probes the token grid; both are part of their params_key (harness.store.sources.
--   variant_key), so a database of an older schema is rebuilt from the files by the ingest that
--   applies this migration (an in-place migration cannot re-key rows of unchanged files);
-- * v_encoder_spatial / v_encoder_probe pick one measurement per (encoder, dataset, grid,
--   weights) and v_study joins each run to the measurements at its own grid and weights;
-- * evaluations gain the protocol fields sampler_precision, to_uint8 and class_balanced.

ALTER TABLE runs ADD COLUMN grid INTEGER[];            -- SiT token grid [h, w] (NULL: config does not resolve it)
ALTER TABLE runs ADD COLUMN random_weights BOOLEAN;    -- the run's encoders / VAE were random-init
ALTER TABLE spatial_metrics ADD COLUMN random_weights BOOLEAN;  -- measured on a random-init encoder
ALTER TABLE spatial_metrics ADD COLUMN weights_id VARCHAR;      -- resolved weights (tag@revision:sha, random-init, builtin)
ALTER TABLE probes ADD COLUMN grid JSON;               -- token grid the encoder ran at (encoder probes)
ALTER TABLE probes ADD COLUMN random_weights BOOLEAN;  -- probed a random-init encoder
ALTER TABLE probes ADD COLUMN weights_id VARCHAR;      -- resolved weights of the probed encoder
ALTER TABLE evaluations ADD COLUMN sampler_precision VARCHAR;  -- network forward dtype while sampling (fp32 | bf16)
ALTER TABLE evaluations ADD COLUMN to_uint8 VARCHAR;           -- sample -> uint8 conversion (truncate | round)
ALTER TABLE evaluations ADD COLUMN class_balanced BOOLEAN;     -- labels i % classes (true) or uniform random (false)

CREATE OR REPLACE VIEW derive_evaluations AS
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
       TRY_CAST(payload->>'$.metrics.class_accuracy' AS DOUBLE) AS class_accuracy,
       TRY_CAST(payload->>'$.metrics.class_accuracy_real' AS DOUBLE) AS class_accuracy_real,
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
       payload->>'$.protocol.precision' AS sampler_precision,
       payload->>'$.protocol.to_uint8' AS to_uint8,
       TRY_CAST(payload->>'$.protocol.class_balanced' AS BOOLEAN) AS class_balanced,
       payload->'$.protocol' AS protocol,
       stage_key,
       finished_at
FROM results
WHERE stage = 'eval' AND status = 'done'
  AND payload->>'$.run_id' IS NOT NULL AND payload->>'$.step' IS NOT NULL
QUALIFY row_number() OVER (PARTITION BY payload->>'$.run_id', CAST(payload->>'$.step' AS BIGINT),
                                        variant_key
                           ORDER BY finished_at DESC, stage_key DESC) = 1;

CREATE OR REPLACE VIEW derive_spatial_metrics AS
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
       coalesce(TRY_CAST(payload->>'$.random_weights' AS BOOLEAN),
                TRY_CAST(config->>'$.random_weights' AS BOOLEAN)) AS random_weights,
       payload->>'$.weights_id' AS weights_id,
       stage_key,
       finished_at
FROM results
WHERE stage = 'spatial' AND status = 'done' AND payload->>'$.encoder' IS NOT NULL
QUALIFY row_number() OVER (PARTITION BY payload->>'$.encoder', data_key, variant_key
                           ORDER BY finished_at DESC, stage_key DESC) = 1;

CREATE OR REPLACE VIEW derive_probes AS
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
       coalesce(payload->'$.token_grid', config->'$.grid') AS grid,
       coalesce(TRY_CAST(payload->>'$.random_weights' AS BOOLEAN),
                TRY_CAST(config->>'$.random_weights' AS BOOLEAN)) AS random_weights,
       payload->>'$.weights_id' AS weights_id,
       stage_key,
       finished_at
FROM probe
QUALIFY row_number() OVER (PARTITION BY subject, data_key, coalesce(payload->>'$.pooling', ''),
                                        variant_key
                           ORDER BY finished_at DESC, stage_key DESC) = 1;

-- The encoder measurement v_study uses per (encoder, dataset, token grid, weights): the most
-- images, then the newest.
CREATE OR REPLACE VIEW v_encoder_spatial AS
SELECT * FROM spatial_metrics
QUALIFY row_number() OVER (PARTITION BY encoder, data_key, grid, random_weights
                           ORDER BY n_images DESC NULLS LAST, finished_at DESC, params_key) = 1;

-- The encoder linear probe v_study uses per (encoder, dataset, token grid, weights): mean
-- pooling of patch tokens (iREPA's protocol) first, then the most training images, the newest.
CREATE OR REPLACE VIEW v_encoder_probe AS
SELECT * FROM probes WHERE encoder IS NOT NULL
QUALIFY row_number() OVER (PARTITION BY encoder, data_key, grid, random_weights
                           ORDER BY (pooling = 'mean') DESC, n_train DESC NULLS LAST,
                                    finished_at DESC, params_key) = 1;

-- v_study as in 003_class_accuracy, the encoder metrics joined at the run's own token grid and
-- weight provenance; grid, random_weights, sampler_precision, to_uint8 and class_balanced last.
CREATE OR REPLACE VIEW v_study AS
SELECT r.sweep, r.run_id, r.encoder, r.method, r.model, r.seed,
       e.step,
       r.status AS train_status,
       e.fid, e.isc, e.kid, e.precision, e.recall, e.fd_dinov2,
       e.class_accuracy, e.class_accuracy_real,
       e.num_samples, e.sampler, e.nfe, e.cfg_scale, e.guidance_low, e.guidance_high, e.vae,
       e.reference_key, e.extractor, e.extractor_substitute, e.protocol_key,
       p.top1 AS lp_top1, p.top5 AS lp_top5,
       s.lds, s.cds, s.srss, s.rmsc,
       n.published_name,
       r.grid, r.random_weights, e.sampler_precision, e.to_uint8, e.class_balanced
FROM runs r
LEFT JOIN evaluations e ON e.run_id = r.run_id
LEFT JOIN v_encoder_spatial s
       ON s.encoder = r.encoder AND s.data_key = r.data_key
      AND CAST(s.grid AS INTEGER[]) = r.grid
      AND s.random_weights IS NOT DISTINCT FROM r.random_weights
LEFT JOIN v_encoder_probe p
       ON p.encoder = r.encoder AND p.data_key = r.data_key
      AND CAST(p.grid AS INTEGER[]) = r.grid
      AND p.random_weights IS NOT DISTINCT FROM r.random_weights
LEFT JOIN encoders n ON n.name = r.encoder;
