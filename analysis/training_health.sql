-- training_health: per run, the last logged loss and alignment cosine, the worst gradient norm,
-- throughput and status; non-finite losses first (diverged runs).
--   harness query --file analysis/training_health.sql
WITH last AS (
    SELECT run_id,
           max(step) AS last_step,
           arg_max(loss, step) AS last_loss,
           arg_max(align_cos, step) AS last_align_cos,
           max(grad_norm) AS max_grad_norm,
           avg(images_per_s) AS images_per_s,
           bool_or(NOT isfinite(loss)) AS non_finite_loss
    FROM train_log
    GROUP BY run_id
)
SELECT r.sweep, r.run_id, r.encoder, r.method, r.model, r.seed, r.status,
       r.steps_done, r.steps_target, l.last_step, round(l.last_loss, 4) AS last_loss,
       round(l.last_align_cos, 4) AS last_align_cos, round(l.max_grad_norm, 3) AS max_grad_norm,
       round(l.images_per_s, 1) AS images_per_s, coalesce(l.non_finite_loss, false) AS non_finite_loss
FROM runs r
LEFT JOIN last l USING (run_id)
ORDER BY non_finite_loss DESC, r.status, r.sweep, r.model, r.method, r.encoder, r.seed;
