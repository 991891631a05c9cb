//! strata-engine: an embeddable LSM-tree key-value storage engine.
