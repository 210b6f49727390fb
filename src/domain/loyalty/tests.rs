//! Given/when/then tests of the loyalty rules.
