//! Fuzz body of the `endpoint` target (the whole client endpoint under random
//! inputs). Internal: not part of the stable API.
