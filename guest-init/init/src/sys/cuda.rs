//! The two steps of the NVIDIA GPU check that need `unsafe`: asking the dynamic
//! loader whether the CUDA driver library loads (cudarc panics on its first driver
//! call when it cannot), and launching the self-test kernel.

use std::ffi::{CStr, CString};
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, LaunchConfig, PushKernelArg};

/// Whether `library` (e.g. `libcuda.so.1`) loads: `Ok`, or the loader's own message
/// (a static musl build says "Dynamic loading not supported").
pub fn library_loadable(library: &str) -> Result<(), String> {
    let name = CString::new(library).map_err(|_| format!("{library:?}: NUL in the name"))?;
    // SAFETY: dlopen takes a NUL-terminated name that outlives the call; the
    // library's constructors are the driver's own, the same cudarc would run.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns NULL or a NUL-terminated string valid until the
        // next dl* call on this thread; it is copied at once.
        let err = unsafe { libc::dlerror() };
        let why = if err.is_null() {
            "the loader gave no reason".to_owned()
        } else {
            // SAFETY: non-null, NUL-terminated (above).
            unsafe { CStr::from_ptr(err) }
                .to_string_lossy()
                .into_owned()
        };
        return Err(format!("{library} could not be loaded: {why}"));
    }
    // SAFETY: `handle` came from a successful dlopen above and is closed once.
    unsafe { libc::dlclose(handle) };
    Ok(())
}

/// Loads `ptx` in `stream`'s context and runs `kernel(out, out.len(), seed)`, whose
/// PTX parameters are `(.u64 out, .u32 n, .u32 seed)` and which writes `out[i]` only
/// for `i < n`.
pub fn run_self_test_kernel(
    stream: &Arc<CudaStream>,
    ptx: &str,
    kernel: &str,
    out: &mut CudaSlice<u32>,
    seed: u32,
) -> Result<(), String> {
    let n = u32::try_from(out.len()).map_err(|_| "self-test buffer too large".to_owned())?;
    let module = stream
        .context()
        .load_module(cudarc::nvrtc::Ptx::from_src(ptx))
        .map_err(|e| format!("cuModuleLoadData: {e:?}"))?;
    let f = module
        .load_function(kernel)
        .map_err(|e| format!("cuModuleGetFunction {kernel}: {e:?}"))?;
    let mut args = stream.launch_builder(&f);
    args.arg(out).arg(&n).arg(&seed);
    // SAFETY: the kernel's parameters are (.u64 out, .u32 n, .u32 seed): the three
    // arguments pushed, in order, with those sizes. It writes out[i] only for
    // i < n = out.len(), so only inside `out`; cudarc orders the launch against
    // `out`'s other uses on `stream`.
    unsafe { args.launch(LaunchConfig::for_num_elems(n)) }
        .map(drop)
        .map_err(|e| format!("cuLaunchKernel: {e:?}"))
}
