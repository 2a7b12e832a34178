"""snslab display client: shows stimulus batches with PsychoPy and reports every presentation."""
