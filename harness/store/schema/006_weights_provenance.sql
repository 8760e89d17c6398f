-- 006_weights_provenance: which weights every encoder measurement used, as columns (documented
-- in analysis/SCHEMA.md).
--
-- * spatial_metrics / probes gain weights_revision (the HF commit / pinned revision the weights
--   came from) and weights_sha256 (first 16 hex digits of the weights file's sha256; in-house
--   encoders: their content key), both NULL for random weights and builtin controls. With
--   random_weights and weights_id they are part of the rows' params_key (harness.store.sources.
--   variant_key), so an older database is rebuilt from the files by the ingest that applies this;
-- * v_study names the weights of the spatial measurement each run is joined to
--   (encoder_weights_id, encoder_weights_revision, encoder_weights_sha256), last.

ALTER TABLE spatial_metrics ADD COLUMN weights_revision VARCHAR;  -- revision / commit of the weights
ALTER TABLE spatial_metrics ADD COLUMN weights_sha256 VARCHAR;    -- sha256[:16] of the weights file
ALTER TABLE probes ADD COLUMN weights_revision VARCHAR;           -- revision / commit of the weights
ALTER TABLE probes ADD COLUMN weights_sha256 VARCHAR;             -- sha256[:16] of the weights file

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
       payload->>'$.weights_revision' AS weights_revision,
       payload->>'$.weights_sha256' AS weights_sha256,
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
       payload->>'$.weights_revision' AS weights_revision,
       payload->>'$.weights_sha256' AS weights_sha256,
       stage_key,
       finished_at
FROM probe
QUALIFY row_number() OVER (PARTITION BY subject, data_key, coalesce(payload->>'$.pooling', ''),
                                        variant_key
                           ORDER BY finished_at DESC, stage_key DESC) = 1;

-- v_encoder_spatial / v_encoder_probe as in 005 (re-bound to the new columns)
CREATE OR REPLACE VIEW v_encoder_spatial AS
SELECT * FROM spatial_metrics
QUALIFY row_number() OVER (PARTITION BY encoder, data_key, grid, random_weights
                           ORDER BY n_images DESC NULLS LAST, finished_at DESC, params_key) = 1;

CREATE OR REPLACE VIEW v_encoder_probe AS
SELECT * FROM probes WHERE encoder IS NOT NULL
QUALIFY row_number() OVER (PARTITION BY encoder, data_key, grid, random_weights
                           ORDER BY (pooling = 'mean') DESC, n_train DESC NULLS LAST,
                                    finished_at DESC, params_key) = 1;

-- v_study as in 005, with the encoder measurement's weights last
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
       r.grid, r.random_weights, e.sampler_precision, e.to_uint8, e.class_balanced,
       s.weights_id AS encoder_weights_id, s.weights_revision AS encoder_weights_revision,
       s.weights_sha256 AS encoder_weights_sha256
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
