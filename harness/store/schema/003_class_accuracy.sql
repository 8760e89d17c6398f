-- 003_class_accuracy: the sample class accuracy of an evaluation and its ceiling (documented in
-- analysis/SCHEMA.md). Both come from the eval payload's metrics (class_accuracy,
-- class_accuracy_real); the ceiling also from the fid_ref payload. The derived tables are
-- refreshed from the derive_* views by the same ingest that applies this migration, so rows of
-- existing artifacts get the new columns (NULL where the payload has no such key).

ALTER TABLE evaluations ADD COLUMN class_accuracy DOUBLE;       -- fraction of samples the substitute classifier assigns to their conditioning class
ALTER TABLE evaluations ADD COLUMN class_accuracy_real DOUBLE;  -- its ceiling: the same classifier's accuracy on the real val images
ALTER TABLE fid_refs ADD COLUMN class_accuracy_real DOUBLE;     -- the substitute classifier's accuracy on the real val images

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
       payload->'$.protocol' AS protocol,
       stage_key,
       finished_at
FROM results
WHERE stage = 'eval' AND status = 'done'
  AND payload->>'$.run_id' IS NOT NULL AND payload->>'$.step' IS NOT NULL
QUALIFY row_number() OVER (PARTITION BY payload->>'$.run_id', CAST(payload->>'$.step' AS BIGINT),
                                        variant_key
                           ORDER BY finished_at DESC, stage_key DESC) = 1;

CREATE OR REPLACE VIEW derive_fid_refs AS
SELECT payload->>'$.reference_key' AS reference_key,
       payload->>'$.extractor' AS extractor,
       TRY_CAST(payload->>'$.n_images' AS BIGINT) AS n_images,
       payload->'$.dataset' AS dataset,
       TRY_CAST(payload->>'$.class_accuracy_real' AS DOUBLE) AS class_accuracy_real,
       stage_key,
       finished_at
FROM results
WHERE stage = 'fid_ref' AND status = 'done' AND payload->>'$.reference_key' IS NOT NULL
QUALIFY row_number() OVER (PARTITION BY payload->>'$.reference_key'
                           ORDER BY finished_at DESC, stage_key DESC) = 1;

-- v_study as in 002_views, with class_accuracy and class_accuracy_real after fd_dinov2.
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
       n.published_name
FROM runs r
LEFT JOIN evaluations e ON e.run_id = r.run_id
LEFT JOIN v_encoder_spatial s ON s.encoder = r.encoder AND s.data_key = r.data_key
LEFT JOIN v_encoder_probe p ON p.encoder = r.encoder AND p.data_key = r.data_key
LEFT JOIN encoders n ON n.name = r.encoder;
