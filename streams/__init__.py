"""modelvc version graph: pure core, Avro codec, Faust app and HTTP API."""
