//! The cdylib calls itself `libcuda.so` (its SONAME): once a test process
//! has loaded it by path, cudarc's `dlopen("libcuda.so")` finds it among
//! the loaded libraries instead of searching for the real driver.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcuda.so");
}
