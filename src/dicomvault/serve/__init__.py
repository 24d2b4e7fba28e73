"""Serving: HTTP (health, metrics, API) now; Q/R SCP, DICOMweb and the dashboard later."""
