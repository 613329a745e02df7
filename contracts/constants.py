"""The vocabularies the SDK checks and the daemon applies, written once."""

# how durable a batch is when the daemon acknowledges it (settings["durability"])
DURABILITY = ("fsync", "flush", "none")
# what a value logged at a step below the current one does (settings["late_steps"])
LATE_STEPS = ("amend", "drop", "error")
# how the values several writers log for one key at one step combine (define_metric(reduce=))
REDUCE_RULES = ("last", "mean", "sum", "min", "max")
# what a metric's summary keeps (define_metric(summary=)); "best" and "copy" are the seeds' older names
SUMMARY_KINDS = ("min", "max", "mean", "first", "last", "best", "none", "copy")
# how a run is recorded (init(mode=))
MODES = ("online", "offline", "disabled")
# where a trackside server listens unless told otherwise (grpc://HOST means grpc://HOST:7311)
SERVER_PORT = 7311
