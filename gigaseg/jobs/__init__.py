"""Job files, the block graph, local and cluster runners, the CLI and the Airflow operator."""
