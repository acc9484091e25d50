//! nettool's entry point: everything is in the library's `nettool::main` (so the commands and
//! their arguments stay inside the crate).

fn main() {
    nettool::main()
}
