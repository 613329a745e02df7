"""Rich data types: tables, histograms, media, plots (see base.py for the logged form)."""
