"""The stream path: event contract, per-user feature state, the Faust app and sinks."""
