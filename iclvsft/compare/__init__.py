"""The ICL-versus-fine-tuning comparison: statistics, result files, plots and the report."""
