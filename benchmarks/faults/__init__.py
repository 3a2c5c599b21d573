"""Fault injection on the live pipeline: detection delay per fault and the alert count of a clean run."""
