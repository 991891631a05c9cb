//! strata-ring: the token space, vnodes, replica placement and movement plans
//! that every Strata node uses to decide who owns a key. Pure computation, no I/O.
