//! The compiler: fleet files → validated documents → resolved fleet model.

pub mod diagnostic;
pub mod load;
