"""Input formats: one module per layout (`videos`, `manifest`, `edaic`, `daicwoz`, `cmdc`), registered in sources."""
