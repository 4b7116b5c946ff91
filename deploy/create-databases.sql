-- MLflow's users and permissions, and the sweep studies: Optuna and MLflow both keep an
-- alembic_version table, so neither can share MLflow's `mlflow` database.
CREATE DATABASE mlflow_auth OWNER mlpipe;
CREATE DATABASE optuna OWNER mlpipe;
