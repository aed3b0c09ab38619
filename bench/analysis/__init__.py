"""Records -> numbers: tables (table/: `bench table`), a study's choices and statistics (study_table)
and its summary (study_report), the statistics (stats), the figures (plot: `bench plot`)."""
