-- A trial's refit reads its stream only over the trial's dates (the
-- schedule's first to last day), every refit tick: this index finds them
-- without reading the stream's whole history (years of imported samples).
CREATE INDEX observations_by_stream_date ON observations (stream_id, local_date);
-- Which device counts on a day two measured is ranked on the whole stream
-- (samples per origin): counted from this index alone, not the table.
CREATE INDEX observations_by_stream_origin ON observations (stream_id, origin, withdrawn_at);
