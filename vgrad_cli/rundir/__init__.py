"""Run directories on disk: files.py writes and reads their files (CSV tables, JSON, atomic writes);
store.py finds and loads existing runs for compare, show, runs and diagnose. No torch, no pandas;
imports only errors.py.
"""
