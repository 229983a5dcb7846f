"""Jobs: what decides to train (triggers, schedules, catch-up) and what trains and pushes.

worker claims a job -> pipeline: embedding (cached) -> vision heads / fine-tune -> versions and
the promotion gate -> predictions pushed to Label Studio. predictor answers /predict.
"""
