-- 001_tables: the tables of the results store (documented in analysis/SCHEMA.md).
--
-- Three layers, all rebuilt identically from the files under the results root:
--   source  one row per source file (result.json, state.json, plan.json, jobs.jsonl rows),
--           replaced by key (INSERT OR REPLACE / delete-then-insert per file);
--   derived one row per natural key, refreshed from the source layer in SQL by every ingest
--           (the derive_* views of 002_views.sql pick the newest artifact per natural key);
--   child   long per-step / per-image rows of the winning artifact, delete-then-insert per
--           stage key (child_loads records which artifact version is loaded).
-- Times are UNIX epoch seconds (DOUBLE); use to_timestamp(x) to read them as timestamps.
-- No secondary indexes: DuckDB upserts misbehave with them (duckdb/duckdb#12684).

CREATE TABLE schema_version (
    version INTEGER PRIMARY KEY,   -- migration number (NNN of schema/NNN_name.sql)
    name VARCHAR NOT NULL,         -- migration file name
    sha256 VARCHAR NOT NULL        -- hash of the migration file as applied
);

-- ------------------------------------------------------------------------------------------
-- source layer
-- ------------------------------------------------------------------------------------------
CREATE TABLE ingested (
    path VARCHAR PRIMARY KEY,      -- source file relative to the results root ('@published/...' for the CSV)
    kind VARCHAR NOT NULL,         -- result | state | train_log | per_image | plan | jobs | published
    stage VARCHAR,                 -- stage name (stage files)
    owner VARCHAR,                 -- stage key (stage files) or sweep name (plan files)
    mtime_ns BIGINT NOT NULL,      -- file modification time when ingested
    size BIGINT NOT NULL,          -- file size in bytes when ingested
    sha256 VARCHAR NOT NULL        -- content hash (16 hex) when ingested
);

CREATE TABLE ingest_errors (
    path VARCHAR PRIMARY KEY,      -- unreadable source file, relative to the results root
    kind VARCHAR NOT NULL,         -- as in ingested.kind
    error VARCHAR NOT NULL,        -- why it was skipped
    mtime_ns BIGINT NOT NULL,      -- retried when the file changes
    size BIGINT NOT NULL
);

CREATE TABLE results (
    stage_key VARCHAR PRIMARY KEY, -- content key of the stage instance
    stage VARCHAR NOT NULL,        -- stage name
    status VARCHAR NOT NULL,       -- done | failed | diverged
    error VARCHAR,                 -- diagnostic of a failed / diverged stage
    started_at DOUBLE,             -- finished_at - wall_time_s
    finished_at DOUBLE NOT NULL,   -- provenance.finished_at (file mtime when absent)
    wall_time_s DOUBLE,            -- provenance.wall_time_s
    job_id VARCHAR,                -- SLURM job id (with _arraytask when in an array)
    data_key VARCHAR NOT NULL,     -- content hash of config.data ('' when the stage has none)
    variant_key VARCHAR NOT NULL,  -- eval: protocol_key; spatial/probe: params_key; else ''
    config JSON,                   -- the resolved config the stage depended on
    payload JSON,                  -- stage-specific results
    provenance JSON,               -- git sha, versions, host, gpu, slurm ids, wall time
    path VARCHAR NOT NULL          -- artifact directory relative to the results root
);

CREATE TABLE stage_states (
    stage_key VARCHAR PRIMARY KEY, -- stage key (from the directory name)
    stage VARCHAR NOT NULL,        -- stage name (from the directory name)
    state VARCHAR NOT NULL,        -- running | failed | interrupted (as written by the job)
    job_id VARCHAR,                -- scheduler job id
    started_at DOUBLE,             -- when the job started the stage
    updated_at DOUBLE NOT NULL,    -- last update (file mtime when absent)
    error VARCHAR,                 -- failure message
    log_tail VARCHAR               -- last log lines
);

CREATE TABLE plans (
    sweep VARCHAR PRIMARY KEY,     -- sweep name (plans/<sweep>/plan.json)
    created_at DOUBLE,             -- when the plan was written
    git_sha VARCHAR,               -- code snapshot the plan was made with
    n_stages INTEGER NOT NULL,     -- stage instances in the plan
    config JSON                    -- the resolved sweep config
);

CREATE TABLE plan_stages (
    sweep VARCHAR NOT NULL,        -- sweep whose plan lists the stage
    stage_key VARCHAR NOT NULL,    -- content key
    stage VARCHAR NOT NULL,        -- stage name
    label VARCHAR,                 -- human-readable label
    labels JSON,                   -- {encoder, method, model, seed, run_id, step}
    needs JSON,                    -- upstream stage keys
    est_gpu_hours DOUBLE,          -- planner's estimate
    config JSON,                   -- the stage's config
    data_key VARCHAR NOT NULL,     -- content hash of config.data ('' when none)
    plan_created_at DOUBLE,        -- plans.created_at
    PRIMARY KEY (sweep, stage_key)
);

CREATE TABLE submissions (
    sweep VARCHAR NOT NULL,        -- plans/<sweep>/jobs.jsonl
    stage_key VARCHAR NOT NULL,    -- submitted stage
    attempt INTEGER NOT NULL,      -- 0 first submission, +1 per resubmission
    job_id VARCHAR,                -- scheduler job id
    executor VARCHAR,              -- slurm | local | debug
    submitted_at DOUBLE,           -- submission time
    state VARCHAR,                 -- state recorded by the sweep engine, if any
    log VARCHAR,                   -- the job's log file
    PRIMARY KEY (sweep, stage_key, attempt)
);

CREATE TABLE child_loads (
    child VARCHAR NOT NULL,        -- child table (train_log | spatial_per_image)
    stage_key VARCHAR NOT NULL,    -- artifact whose rows are loaded
    signature VARCHAR NOT NULL,    -- file hash + owner key the rows were loaded with
    PRIMARY KEY (child, stage_key)
);

-- ------------------------------------------------------------------------------------------
-- derived layer (natural keys)
-- ------------------------------------------------------------------------------------------
CREATE TABLE encoders (
    name VARCHAR PRIMARY KEY,      -- catalogue name
    family VARCHAR,                -- e.g. DINOv2, PE-Core, control
    source VARCHAR,                -- timm | open_clip | transformers | torch_hub | checkpoint | builtin
    model_id VARCHAR,              -- library model id / hub entry / checkpoint path
    embed_dim INTEGER,             -- token width D
    patch_size INTEGER,            -- encoder patch size
    published_name VARCHAR,        -- the name used in published_results.csv
    irepa27 BOOLEAN,               -- one of the 27 encoders of iREPA's study
    spec JSON                      -- the full catalogue entry
);

CREATE TABLE stages (
    key VARCHAR PRIMARY KEY,       -- content key
    stage VARCHAR NOT NULL,        -- stage name
    sweeps VARCHAR[] NOT NULL,     -- sweeps whose plans list the stage (sorted)
    label VARCHAR,                 -- human-readable label
    labels JSON,                   -- {encoder, method, model, seed, run_id, step}
    needs JSON,                    -- upstream stage keys
    state VARCHAR NOT NULL,        -- planned | submitted | running | done | failed | diverged | interrupted | cancelled
    job_id VARCHAR,                -- latest scheduler job id
    executor VARCHAR,              -- slurm | local | debug
    attempt INTEGER,               -- latest submission attempt
    submitted_at DOUBLE,           -- latest submission
    started_at DOUBLE,             -- latest start
    finished_at DOUBLE,            -- end of the latest finished attempt
    wall_time_s DOUBLE,            -- wall time of the finished attempt
    est_gpu_hours DOUBLE,          -- planner's estimate
    error VARCHAR,                 -- failure message
    log_tail VARCHAR,              -- last log lines of a failure
    job_log VARCHAR,               -- log file of the latest job
    path VARCHAR                   -- artifact directory relative to the results root
);

CREATE TABLE runs (
    run_id VARCHAR PRIMARY KEY,    -- training run id
    sweep VARCHAR,                 -- first sweep that planned the run (NULL: not in any plan)
    encoder VARCHAR,               -- encoder name (NULL for method none)
    method VARCHAR,                -- none | repa | irepa
    model VARCHAR,                 -- SiT size
    seed BIGINT,                   -- training seed
    steps_target BIGINT,           -- configured steps
    steps_done BIGINT,             -- steps reached (last logged step while running)
    status VARCHAR NOT NULL,       -- the train stage's state
    train_key VARCHAR NOT NULL,    -- stage key of the train stage
    data_key VARCHAR NOT NULL,     -- dataset the run trained on (content hash of config.data)
    images_per_s DOUBLE,           -- training throughput
    final_loss DOUBLE,             -- final.loss
    final_flow_loss DOUBLE,        -- final.flow_loss
    final_proj_loss DOUBLE,        -- final.proj_loss
    final_align_cos DOUBLE,        -- final.align_cos
    diverged JSON,                 -- divergence diagnostic (NULL when the run did not diverge)
    error VARCHAR,                 -- failure message
    wall_time_s DOUBLE,            -- training wall time
    config JSON                    -- the run config
);

CREATE TABLE evaluations (
    run_id VARCHAR NOT NULL,       -- evaluated run
    step BIGINT NOT NULL,          -- checkpoint step
    protocol_key VARCHAR NOT NULL, -- content hash of every protocol field
    fid DOUBLE,                    -- FID against reference_key
    isc DOUBLE,                    -- Inception Score (mean)
    isc_std DOUBLE,                -- Inception Score (std)
    kid DOUBLE,                    -- KID (mean)
    kid_std DOUBLE,                -- KID (std)
    precision DOUBLE,              -- improved precision
    recall DOUBLE,                 -- improved recall
    fd_dinov2 DOUBLE,              -- Fréchet distance in DINOv2 space
    num_samples BIGINT,            -- generated images
    sampler VARCHAR,               -- sampler (sde | ode ...)
    nfe BIGINT,                    -- network evaluations per image
    cfg_scale DOUBLE,              -- classifier-free guidance scale
    guidance_low DOUBLE,           -- guidance interval start
    guidance_high DOUBLE,          -- guidance interval end
    vae VARCHAR,                   -- decoder
    sample_seed BIGINT,            -- sampling seed
    reference_key VARCHAR,         -- FID reference statistics key
    extractor VARCHAR,             -- feature extractor
    extractor_weights VARCHAR,     -- extractor weights (file / hash)
    extractor_substitute BOOLEAN,  -- true when a substitute extractor was used (not comparable to papers)
    torch_fidelity VARCHAR,        -- torch-fidelity version
    protocol JSON,                 -- the full protocol
    stage_key VARCHAR NOT NULL,    -- eval stage artifact
    finished_at DOUBLE,            -- when the evaluation finished
    PRIMARY KEY (run_id, step, protocol_key)
);

CREATE TABLE spatial_metrics (
    encoder VARCHAR NOT NULL,      -- measured encoder
    data_key VARCHAR NOT NULL,     -- dataset (content hash of config.data)
    params_key VARCHAR NOT NULL,   -- content hash of grid, n_images and params
    dataset JSON,                  -- dataset descriptor / fingerprint from the payload
    grid JSON,                     -- token grid
    n_images BIGINT,               -- images measured
    lds DOUBLE, lds_std DOUBLE, lds_n BIGINT,     -- local vs distant similarity
    cds DOUBLE, cds_std DOUBLE, cds_n BIGINT,     -- correlation-decay slope
    srss DOUBLE, srss_std DOUBLE, srss_n BIGINT,  -- semantic-region self-similarity
    rmsc DOUBLE, rmsc_std DOUBLE, rmsc_n BIGINT,  -- RMS spatial contrast
    params JSON,                   -- metric parameters
    stage_key VARCHAR NOT NULL,    -- spatial stage artifact
    finished_at DOUBLE,
    PRIMARY KEY (encoder, data_key, params_key)
);

CREATE TABLE probes (
    subject VARCHAR NOT NULL,      -- 'encoder:<name>' or 'run:<run_id>@<step>/<block>'
    data_key VARCHAR NOT NULL,     -- dataset (content hash of config.data)
    pooling VARCHAR NOT NULL,      -- token pooling (mean, cls, ...)
    params_key VARCHAR NOT NULL,   -- content hash of n_train, n_val, subset_per_class, lr grid
    encoder VARCHAR,               -- probed encoder (encoder probes)
    run_id VARCHAR,                -- probed run (SiT-feature probes)
    step BIGINT,                   -- probed checkpoint step (SiT-feature probes)
    block INTEGER,                 -- probed SiT block (SiT-feature probes)
    top1 DOUBLE,                   -- top-1 accuracy (%)
    top5 DOUBLE,                   -- top-5 accuracy (%)
    best_lr DOUBLE,                -- chosen learning rate
    lr_grid JSON,                  -- [{lr, holdout_top1}]
    n_train BIGINT,                -- training images
    n_val BIGINT,                  -- validation images
    subset_per_class BIGINT,       -- images per class (NULL: all)
    features_key VARCHAR,          -- feature cache key
    stage_key VARCHAR NOT NULL,    -- probe stage artifact
    finished_at DOUBLE,
    PRIMARY KEY (subject, data_key, pooling, params_key)
);

CREATE TABLE environments (
    key VARCHAR PRIMARY KEY,       -- stage key
    stage VARCHAR NOT NULL,        -- stage name
    git_sha VARCHAR,               -- code version
    host VARCHAR,                  -- host name
    gpu VARCHAR,                   -- GPU name (NULL on CPU)
    python VARCHAR,                -- Python version
    platform VARCHAR,              -- OS / platform string
    packages JSON,                 -- {package: version}
    slurm_job_id VARCHAR,          -- SLURM_JOB_ID
    slurm_array_task_id VARCHAR,   -- SLURM_ARRAY_TASK_ID
    slurm_restart_count VARCHAR,   -- SLURM_RESTART_COUNT (requeues)
    finished_at DOUBLE,
    wall_time_s DOUBLE
);

CREATE TABLE fid_refs (
    reference_key VARCHAR PRIMARY KEY, -- reference statistics key
    extractor VARCHAR,             -- feature extractor
    n_images BIGINT,               -- reference images
    dataset JSON,                  -- dataset descriptor
    stage_key VARCHAR NOT NULL,    -- fid_ref stage artifact
    finished_at DOUBLE
);

-- ------------------------------------------------------------------------------------------
-- child layer
-- ------------------------------------------------------------------------------------------
CREATE TABLE train_log (
    run_id VARCHAR NOT NULL,       -- training run
    step BIGINT NOT NULL,          -- optimiser step
    loss DOUBLE,                   -- total loss (NaN kept: divergence)
    flow_loss DOUBLE,              -- flow-matching loss
    proj_loss DOUBLE,              -- alignment loss
    align_cos DOUBLE,              -- mean cosine similarity of the alignment
    grad_norm DOUBLE,              -- gradient norm before clipping
    lr DOUBLE,                     -- learning rate
    images_per_s DOUBLE,           -- throughput
    time DOUBLE,                   -- wall-clock time of the row
    stage_key VARCHAR NOT NULL,    -- train stage artifact the rows come from
    PRIMARY KEY (run_id, step)
);

CREATE TABLE spatial_per_image (
    encoder VARCHAR NOT NULL,      -- as spatial_metrics
    data_key VARCHAR NOT NULL,
    params_key VARCHAR NOT NULL,
    image_index BIGINT NOT NULL,   -- dataset index of the image
    lds DOUBLE, cds DOUBLE, srss DOUBLE, rmsc DOUBLE, -- per-image metrics (srss NaN: no valid pairs)
    stage_key VARCHAR NOT NULL,    -- spatial stage artifact
    PRIMARY KEY (encoder, data_key, params_key, image_index)
);

-- ------------------------------------------------------------------------------------------
-- published numbers (analysis/published/published_results.csv)
-- ------------------------------------------------------------------------------------------
CREATE TABLE published (
    row_id INTEGER PRIMARY KEY,    -- line number in the CSV (1 = first data row)
    paper VARCHAR NOT NULL,        -- source paper
    encoder VARCHAR,               -- published encoder name (encoders.published_name)
    model VARCHAR,                 -- SiT-XL/2, ..., or encoder-only
    method VARCHAR,                -- none | repa | irepa
    train_steps VARCHAR,           -- as printed ('100000', '800 epochs', 'NA' -> NULL)
    train_iters BIGINT,            -- iterations when the paper states them
    cfg DOUBLE,                    -- guidance scale (NULL: not applicable / not stated)
    metric VARCHAR NOT NULL,       -- gFID, LDS, pearson_r(LDS,gFID), ...
    value DOUBLE NOT NULL,         -- the published number
    source_note VARCHAR            -- where in the paper
);
