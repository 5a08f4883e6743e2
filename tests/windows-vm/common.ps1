# Shared helpers of the hivetrack Windows VM kit. Dot-source it: . "$PSScriptRoot\common.ps1"
Set-StrictMode -Version Latest
$ErrorActionPreference = 'Stop'

$Kit = $PSScriptRoot
$Package = if ($env:HIVETRACK_PACKAGE) { $env:HIVETRACK_PACKAGE } else { Join-Path $Kit 'package' }
$Results = Join-Path $Kit 'results'
$State = Join-Path $Kit 'state.json'
$Exe = Join-Path $Package 'hivetrack.exe'
$Inf = Join-Path $Package 'hivetrack.inf'
New-Item -ItemType Directory -Force -Path $Results | Out-Null

function Assert-Admin {
    $id = [Security.Principal.WindowsIdentity]::GetCurrent()
    $p = New-Object Security.Principal.WindowsPrincipal($id)
    if (-not $p.IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)) {
        throw 'Run this from an elevated PowerShell (Administrator).'
    }
}

function Get-KitState {
    if (Test-Path $State) { return Get-Content $State -Raw | ConvertFrom-Json }
    return [pscustomobject]@{ step = 'start' }
}

function Set-KitState([string]$Step) {
    [pscustomobject]@{ step = $Step; at = (Get-Date).ToString('o') } | ConvertTo-Json | Set-Content $State
}

function Write-Result([string]$Name, [bool]$Ok, [string]$Detail) {
    $line = '{0} {1}: {2}' -f ($(if ($Ok) { 'PASS' } else { 'FAIL' })), $Name, $Detail
    Write-Host $line
    Add-Content -Path (Join-Path $Results 'summary.txt') -Value $line
    if (-not $Ok) { $script:Failures++ }
}

# Runs a native command with its stderr merged into its output; the caller reads the exit
# code (.Code, and $LASTEXITCODE). Windows PowerShell 5.1 makes a native command's stderr line
# a terminating error under $ErrorActionPreference = 'Stop' (Learn, "Differences between
# Windows PowerShell 5.1 and PowerShell": from 7.1 "the runtime no longer applies
# $ErrorActionPreference if the ErrorRecord comes from a native command"); reg.exe, sc.exe and
# hivetrack.exe write their failures there, some of them expected (a `reg unload` of a held
# hive). So the preference is 'Continue' while one runs (found in review: step 3 stopped at
# its first `reg delete` of a key that did not exist yet).
function Invoke-Native([scriptblock]$Command) {
    $ErrorActionPreference = 'Continue'
    $out = & $Command 2>&1 | ForEach-Object { "$_" }
    return [pscustomobject]@{ Code = $LASTEXITCODE; Text = ($out -join "`n") }
}

function Invoke-Hivetrack([string[]]$Arguments) {
    return Invoke-Native { & $Exe @Arguments }
}

# A test hive of the kit's own: HKCU\Software\<Name> with the subkey <Subkey> is saved to a
# hive file under %TEMP%\hivetrack-kit, deleted, and the file loaded as HKU\<Name>. Returns
# whether the load succeeded (steps 3, 3b and 3d).
function New-TestHive([string]$Name, [string]$Subkey) {
    $work = Join-Path $env:TEMP 'hivetrack-kit'
    New-Item -ItemType Directory -Force -Path $work | Out-Null
    $file = Join-Path $work "$Name.hiv"
    Invoke-Native { reg delete "HKCU\Software\$Name" /f } | Out-Null
    reg add "HKCU\Software\$Name\$Subkey" /f | Out-Null
    Remove-Item $file -ErrorAction SilentlyContinue
    reg save "HKCU\Software\$Name" $file /y | Out-Null
    reg delete "HKCU\Software\$Name" /f | Out-Null
    reg load "HKU\$Name" $file | Out-Null
    return ($LASTEXITCODE -eq 0)
}

# pnputil's documented success codes (Learn, "PnPUtil return values"): 0 ERROR_SUCCESS, 3010
# ERROR_SUCCESS_REBOOT_REQUIRED ("the requested operation completed successfully and a
# system reboot is required"), 1641 ERROR_SUCCESS_REBOOT_INITIATED (only with /reboot, which
# the kit never passes). 259 ERROR_NO_MORE_ITEMS ("no devices match the supplied driver", or
# a better one is installed) is not success for the kit.
function Test-PnputilOk([int]$Code) { return $Code -in 0, 3010 }

# Step 2 arms Driver Verifier for the next boot; steps 3, 3b and 3d are only worth their PASS
# lines if it is active now (audit 21c M1): the machine booted after step 2 armed it, and
# `verifier /query` (Learn, "Driver Verifier command syntax": "/query displays a summary of
# Driver Verifier's current activity") names hivetrack.sys among the drivers it verifies. The
# counters are matched by the names of SYSTEM_VERIFIER_INFORMATION's fields (Loads,
# AllocationsFailedDeliberately) as /query prints them; that text has not been seen here, so
# a line that does not parse is a FAIL that says so, never a silent PASS. Warns when the
# machine has been up less than 7 minutes (the /faults DelayMins default, same page: before
# that, low-resources simulation fails nothing).
function Assert-Verified {
    $query = verifier /query | Out-String
    $query | Set-Content (Join-Path $Results 'verifier-query-before.txt')
    $boot = (Get-CimInstance Win32_OperatingSystem).LastBootUpTime
    $state = Get-KitState
    $armedAt = if ($state.PSObject.Properties['at']) { [datetime]$state.at } else { $null }
    $rebooted = ($null -ne $armedAt) -and ($boot -gt $armedAt)
    Write-Result 'rebooted since step 2 armed Driver Verifier' $rebooted "boot $boot, armed $armedAt"
    $verified = $query -match '(?ms)hivetrack\.sys.{0,80}?loads:\s*(\d+)'
    $loads = if ($verified) { [int]$Matches[1] } else { 0 }
    Write-Result 'verifier /query lists hivetrack.sys as verified and loaded' ($verified -and $loads -ge 1) `
        $(if ($verified) { "loads: $loads" } else { 'not under Driver Verifier: run step 2 and reboot (or the /query text differs: see results\verifier-query-before.txt)' })
    $uptime = (Get-Date) - $boot
    if ($uptime.TotalMinutes -lt 7) {
        Write-Warning ("Up {0:N1} min: low-resources simulation fails nothing before 7 minutes after boot." -f $uptime.TotalMinutes)
    }
}

# At the end of a step: how many allocations Driver Verifier failed on purpose. 0 means the
# low-resources simulation proved nothing in this run (said, not failed: it is random).
function Write-FaultCount {
    $query = verifier /query | Out-String
    if ($query -match 'AllocationsFailedDeliberately:\s*(\d+)') {
        $n = [int]$Matches[1]
        $detail = if ($n -eq 0) { 'no allocation was failed deliberately: low-resources simulation proved nothing this run' } else { "$n" }
        Add-Content -Path (Join-Path $Results 'summary.txt') -Value "INFO allocations failed deliberately: $detail"
        Write-Host "INFO allocations failed deliberately: $detail"
    } else {
        Add-Content -Path (Join-Path $Results 'summary.txt') -Value 'INFO no AllocationsFailedDeliberately line in verifier /query (see results\verifier-query.txt)'
    }
}

# Audit 24a F2: Driver Verifier verifies a driver through its import table (Learn,
# MmIsDriverVerifying, Remarks; WRK base/ntos/mm/sysload.c MiApplyDriverVerifier), while
# hivetrack resolves 25 routines at run time with MmGetSystemRoutineAddress, ExAllocatePool2
# and the four EX_SPIN_LOCK routines among them (driver/src/routines.rs). No source says
# whether Verifier sees calls made through those pointers. Its counters tell (Learn,
# "Monitoring Global Counters": `verifier /query` shows the global counters, AcquireSpinLocks
# among them, and each verified driver's own: its pool allocations and bytes): with only
# hivetrack.sys verified (step 2), a run that tracks keys should raise AcquireSpinLocks and
# hivetrack's non-paged pool counts. The answer is written down (INFO lines and
# results\verifier-coverage.txt), not judged: copy it into README.md ("What is verified
# without Windows, and what is not").
function Get-VerifierCounter([string]$Query, [string]$Name, [string]$Driver) {
    $text = $Query
    if ($Driver) {
        # The driver's own block: from its "Name:" line to the next one.
        if ($Query -match "(?ms)Name:\s*$([regex]::Escape($Driver))\b(.*?)(?=^\s*Name:|\z)") { $text = $Matches[1] } else { return $null }
    }
    if ($text -match "(?m)\b$Name\s*:\s*(\d+)") { return [int64]$Matches[1] }
    return $null
}

function Write-VerifierCoverage([string]$Before, [string]$After, [int64]$BudgetUsedBytes) {
    # Review 24b MED-2: Learn defines AcquireSpinLocks only as "the number of times verified
    # drivers acquired spin locks", so a counter that does not move says the calls were not
    # counted, not that they go unchecked; each negative line says "cannot tell" and the
    # operator reads the run's other evidence. The counters are 32-bit: after < before is a
    # wrap or a reset, also "cannot tell".
    $lines = @()
    $drivers = ([regex]::Matches($After, '(?m)^\s*Name:\s*\S+')).Count
    if ($drivers -ne 1) {
        $lines += "scope: verifier /query lists $drivers verified driver(s), not hivetrack.sys alone: the global counters below are not hivetrack's only"
    }
    $locksBefore = Get-VerifierCounter $Before 'AcquireSpinLocks' $null
    $locksAfter = Get-VerifierCounter $After 'AcquireSpinLocks' $null
    $lines += if ($null -eq $locksBefore -or $null -eq $locksAfter) {
        'spin locks: no AcquireSpinLocks line in verifier /query: cannot tell'
    } elseif ($locksAfter -gt $locksBefore) {
        "spin locks: AcquireSpinLocks rose by $($locksAfter - $locksBefore) during the run: Verifier counts hivetrack's lock calls (routines resolved at run time included, as it has no other lock path on Windows 10 2004+)"
    } elseif ($locksAfter -lt $locksBefore) {
        "spin locks: AcquireSpinLocks went from $locksBefore to $locksAfter (a 32-bit wrap or a reset): cannot tell"
    } else {
        'spin locks: AcquireSpinLocks did not move while hivetrack tracked keys: Verifier did not count its EX_SPIN_LOCK calls (resolved at run time); whether it checks them cannot be told from this'
    }
    $peak = Get-VerifierCounter $After 'PeakNonPagedPoolAllocations' 'hivetrack.sys'
    $bytes = Get-VerifierCounter $After 'NonPagedPoolUsageInBytes' 'hivetrack.sys'
    $untracked = Get-VerifierCounter $After 'UnTrackedPool' $null
    $lines += if ($null -eq $peak) {
        'pool: no PeakNonPagedPoolAllocations line for hivetrack.sys in verifier /query: cannot tell'
    } elseif ($peak -gt 0) {
        "pool: Verifier counted hivetrack's non-paged pool (peak $peak allocation(s), $bytes byte(s) now; hivetrack stats: at most $BudgetUsedBytes byte(s) of tracking memory): its ExAllocatePool2 blocks are tracked"
    } elseif ($BudgetUsedBytes -gt 0) {
        "pool: Verifier counted no non-paged pool for hivetrack.sys while it held up to $BudgetUsedBytes byte(s) of tracking memory (UnTrackedPool: $untracked): its ExAllocatePool2 blocks (resolved at run time) were not counted, so pool tracking, special pool and low-resources simulation most likely do not cover them"
    } else {
        'pool: neither Verifier nor hivetrack stats counted tracking memory: cannot tell'
    }
    $lines | Set-Content (Join-Path $Results 'verifier-coverage.txt')
    foreach ($l in $lines) {
        Add-Content -Path (Join-Path $Results 'summary.txt') -Value "INFO Verifier coverage, $l"
        Write-Host "INFO Verifier coverage, $l"
    }
}
