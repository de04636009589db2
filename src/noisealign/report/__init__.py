"""`noisealign report`: tables, plots, diversity, hacking flags and image grids of a sweep folder,
as one self-contained report.html, report.md and CSV tables."""
