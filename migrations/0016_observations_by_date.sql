-- A trial's refit reads its stream only over the trial's dates (the
-- schedule's first to last day), every refit tick: this index finds them
-- without reading the stream's whole history (years of imported samples).
CREATE INDEX observations_by_stream_date ON observations (stream_id, local_date);
