"""Evaluation: metrics on subject totals and items, reports with plots, and offline batch scoring."""
