//! strata-server: the `kvnode` cluster node. Not built yet: see the open issues.
