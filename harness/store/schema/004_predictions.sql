-- 004_predictions: the fits of `harness rank` (documented in analysis/SCHEMA.md). Source
-- tables of the files rank/<fit_id>/predictions.json, replaced per file like every source
-- table, so `harness ingest --rebuild` reproduces them from the files alone.

CREATE TABLE predictions (
    fit_id VARCHAR NOT NULL,       -- rank/<fit_id>/: content hash of the fit's inputs
    created_at DOUBLE,             -- when harness rank wrote the file
    against VARCHAR NOT NULL,      -- 'published' or the sweep whose FIDs were fitted
    facet VARCHAR NOT NULL,        -- the one set of comparable FIDs (protocol guard)
    protocol VARCHAR,              -- its evaluation protocol id (P1, ...) or 'published'
    measure_sweep VARCHAR,         -- the sweep whose image set the encoder metrics come from
    level DOUBLE NOT NULL,         -- nominal coverage of the prediction intervals
    encoder VARCHAR NOT NULL,      -- catalogue name
    model VARCHAR NOT NULL,        -- mean-only | LDS | CDS | SRSS | RMSC | LP | ridge(...)
    features VARCHAR,              -- the encoder metrics the model uses, comma-separated
    role VARCHAR NOT NULL,         -- candidate (no FID: predicted) | held_out (leave-one-out)
    measured_fid DOUBLE,           -- the fitted FID (held_out rows)
    predicted_fid DOUBLE,          -- the prediction
    low DOUBLE,                    -- prediction interval
    high DOUBLE,
    rank INTEGER,                  -- candidates: rank by this model's prediction (1 = best)
    n_train INTEGER,               -- encoders the model was fitted on
    git_sha VARCHAR,               -- code that fitted it
    harness_version VARCHAR,
    provenance JSON                -- training encoders, measurement stage keys, options
);

CREATE TABLE prediction_cv (
    fit_id VARCHAR NOT NULL,       -- as in predictions
    model VARCHAR NOT NULL,
    features VARCHAR,
    n INTEGER,                     -- encoders cross-validated
    mae DOUBLE,                    -- leave-one-encoder-out mean absolute error
    rmse DOUBLE,
    spearman DOUBLE,               -- Spearman rho of held-out predicted vs measured FID
    coverage DOUBLE,               -- fraction of held-out FIDs inside their interval
    mae_mean_only DOUBLE,          -- the mean-only predictor on the same encoders
    spearman_mean_only DOUBLE,
    coverage_mean_only DOUBLE,
    beats_mean_only BOOLEAN,       -- mae < mae_mean_only
    note VARCHAR                   -- why a model has no scores
);
