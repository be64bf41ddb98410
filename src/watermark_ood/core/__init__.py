"""The foundation every layer may use: the one error type, file I/O without pickle, typed field checks, randomness derived from (seed, epoch, step), process-group facts, progress output."""
