"""Media ends of the pipeline: sources that lease ring slots and fill them, sinks that write frames out."""
